"""Stage-2 post-processing: decoder output -> colour fix -> image at exactly ``upscale x`` the input size.

Two orders, chosen with ``CCSRPipeline(..., postprocess=...)``:

* ``"reference"`` (default): the authors' ``test_ccsr_tile.py`` step by step, so that the 8-bit files equal
  theirs for the same weights, input and noise:

  1. diffusers' ``VaeImageProcessor.postprocess``: ``(x / 2 + 0.5).clamp(0, 1)``, x255, **rounded** to uint8;
  2. the colour fix (StableSR's ``adain_color_fix`` / ``wavelet_color_fix``) on that 8-bit image read back as
     float32 ``[0, 1]`` (torchvision ``ToTensor``), against the canvas, on the CPU as the authors' script runs it;
  3. torchvision ``ToPILImage``: x255 and **truncation** to uint8 (skipped with no colour fix, as theirs);
  4. PIL bicubic resize of the 8-bit image to exactly ``upscale x`` the input when the canvas differs.

* ``"float"``: the colour fix on the float decoder output, a bicubic resize in float
  (:func:`ccsr.image.resize_float`) and one rounding at the end. It keeps more precision: the reference's
  truncation makes its images about half a level darker on average and the 8-bit rounding before
  AdaIN can move values by up to 2 levels (see the README's "Differences from the authors' code").
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ccsr.color import apply_color_fix
from ccsr.image import resize_float, tensor_to_pil, tensor_to_uint8
from ccsr.options import WAVELET_LEVELS, check_color_fix, check_postprocess


def reference_uint8(
    decoded: torch.Tensor,
    canvas: torch.Tensor,
    color_fix: str,
    output_size: tuple[int, int],
    wavelet_levels: int = WAVELET_LEVELS,
) -> np.ndarray:
    """The authors' 8-bit path. ``decoded``: the decoder output mapped to ``[0, 1]``, ``(B, 3, H, W)``;
    ``canvas``: the bicubic canvas in ``[0, 1]``; returns uint8 ``(B, H', W', 3)`` at ``output_size``.
    ``wavelet_levels``: see :func:`ccsr.color.apply_color_fix` (the authors': 5)."""
    rounded = tensor_to_uint8(decoded)  # diffusers' numpy_to_pil: (x * 255).round()
    if check_color_fix(color_fix) != "none":
        as_float = torch.from_numpy(rounded).permute(0, 3, 1, 2).float().div(255)  # ToTensor
        source = canvas.detach().to("cpu", torch.float32)
        fixed = apply_color_fix(as_float, source, color_fix, wavelet_levels)
        rounded = fixed.mul(255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # ToPILImage truncates
    size = (int(output_size[0]), int(output_size[1]))
    if rounded.shape[2:0:-1] == size:
        return rounded
    return np.stack([np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BICUBIC)) for a in rounded])


def float_images(
    decoded: torch.Tensor,
    canvas: torch.Tensor,
    color_fix: str,
    output_size: tuple[int, int],
    wavelet_levels: int = WAVELET_LEVELS,
) -> torch.Tensor:
    """The float path: colour fix and bicubic resize in float32, ``(B, 3, H', W')`` in ``[0, 1]``."""
    fixed = apply_color_fix(decoded, canvas, color_fix, wavelet_levels)
    return resize_float(fixed, output_size).clamp(0, 1)


def finish_images(
    decoded: torch.Tensor,
    canvas: torch.Tensor,
    color_fix: str,
    output_size: tuple[int, int],
    mode: str,
    output_type: str,
    wavelet_levels: int = WAVELET_LEVELS,
) -> list[Image.Image] | np.ndarray | torch.Tensor:
    """Post-process with ``mode`` and return ``output_type`` (``"pil"``, ``"np"`` ``(B, H, W, 3)`` or ``"pt"``
    ``(B, 3, H, W)``, float in ``[0, 1]``). With ``"reference"`` the floats are the 8-bit values / 255, so
    rounding them x255 gives the authors' bytes back."""
    if check_postprocess(mode) == "float":
        sr = float_images(decoded, canvas, color_fix, output_size, wavelet_levels)
        if output_type == "pil":
            return tensor_to_pil(sr)
        return sr.permute(0, 2, 3, 1).cpu().numpy() if output_type == "np" else sr
    pixels = reference_uint8(decoded, canvas, color_fix, output_size, wavelet_levels)
    if output_type == "pil":
        return [Image.fromarray(a) for a in pixels]
    arr = pixels.astype(np.float32) / 255.0
    return arr if output_type == "np" else torch.from_numpy(arr).permute(0, 3, 1, 2).to(decoded.device)
