"""Pre- and post-processing of images: the reference's resize plan and PIL/NumPy/tensor conversion.

The resize plan reproduces ``test_ccsr_tile.py`` (docs/algorithm.md §1.3) with PIL's bicubic filter:
enlarge small inputs so that the output's short side reaches ``process_size``, upscale by
``upscale``, stretch to multiples of 8, and after super-resolution resize to exactly
``upscale x`` the input size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported where it is used: the resize plan is needed before torch loads
    import torch

#: Canvas sides are multiples of this (the VAE's downsampling factor of SD).
CANVAS_MULTIPLE = 8


@dataclass(frozen=True)
class ResizePlan:
    """Sizes are ``(width, height)`` as PIL uses them."""

    input_size: tuple[int, int]
    enlarged_size: tuple[int, int]  # after the small-input rule (== input_size when not small)
    upscaled_size: tuple[int, int]  # enlarged_size * upscale
    canvas_size: tuple[int, int]  # upscaled_size floored to multiples of 8: what the model sees
    output_size: tuple[int, int]  # input_size * upscale: what the user gets


def plan_resize(size: tuple[int, int], upscale: int, process_size: int = 512) -> ResizePlan:
    """The reference's resize plan for an input of ``size = (width, height)``.

    ``process_size`` is a minimum: when either side is below ``process_size // upscale`` the input
    is enlarged (aspect kept) so that its short side equals it; large inputs are never shrunk.
    """
    w0, h0 = (int(v) for v in size)
    if w0 < 1 or h0 < 1:
        raise ValueError(f"image size {w0}x{h0} is empty")
    if not isinstance(upscale, int) or isinstance(upscale, bool) or upscale < 1:
        raise ValueError(f"upscale={upscale!r} must be a positive integer")
    if process_size < 0:
        raise ValueError(f"process_size={process_size} must be >= 0")
    w, h = w0, h0
    min_side = process_size // upscale
    if w0 < min_side or h0 < min_side:
        s = min_side / min(w0, h0)
        w, h = round(s * w0), round(s * h0)
    uw, uh = w * upscale, h * upscale
    cw, ch = uw // CANVAS_MULTIPLE * CANVAS_MULTIPLE, uh // CANVAS_MULTIPLE * CANVAS_MULTIPLE
    if cw == 0 or ch == 0:
        raise ValueError(
            f"image of {w0}x{h0} upscaled x{upscale} is {uw}x{uh}, smaller than {CANVAS_MULTIPLE} pixels on a side; "
            f"raise process_size (now {process_size}) or the upscale factor"
        )
    return ResizePlan((w0, h0), (w, h), (uw, uh), (cw, ch), (w0 * upscale, h0 * upscale))


def make_canvas(image: Image.Image, plan: ResizePlan) -> Image.Image:
    """Apply the plan's resizes to an RGB image, each with PIL bicubic as the reference."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}; convert it first")
    if image.size != plan.input_size:
        raise ValueError(f"image is {image.size}, plan is for {plan.input_size}")
    img = image
    if plan.enlarged_size != plan.input_size:
        img = img.resize(plan.enlarged_size, Image.Resampling.BICUBIC)
    img = img.resize(plan.upscaled_size, Image.Resampling.BICUBIC)
    return img.resize(plan.canvas_size, Image.Resampling.BICUBIC)


def pad_canvas(canvas: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror ``pad`` pixels onto every side of ``(B, C, H, W)`` images (reflect; replicate when a side
    is too short to mirror), so that the networks' zero padding falls outside the picture; crop with
    ``x[..., pad:-pad, pad:-pad]`` afterwards. ``pad`` must be a multiple of :data:`CANVAS_MULTIPLE`."""
    if pad < 0 or pad % CANVAS_MULTIPLE:
        raise ValueError(f"border_pad={pad} must be a non-negative multiple of {CANVAS_MULTIPLE}")
    if pad == 0:
        return canvas
    import torch

    mode = "reflect" if min(canvas.shape[-2:]) > pad else "replicate"
    return torch.nn.functional.pad(canvas, (pad,) * 4, mode=mode)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 ``(1, 3, H, W)`` in ``[0, 1]``."""
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def resize_float(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of float ``(B, C, H, W)`` images to ``size = (width, height)`` with PIL's filter.

    Runs PIL's bicubic on float32 planes (mode ``F``) in PIL's order (horizontal pass, clip to
    ``[0, 1]`` as PIL's 8-bit intermediate does, vertical pass), so the result matches PIL's resize of
    the 8-bit image up to quantisation, without the 8-bit rounding.
    """
    import torch

    b, c, h, w = images.shape
    if (w, h) == tuple(size):
        return images
    planes = images.detach().to("cpu", torch.float32).numpy()
    out = np.empty((b, c, size[1], size[0]), dtype=np.float32)
    for i in range(b):
        for j in range(c):
            plane = Image.fromarray(np.ascontiguousarray(planes[i, j]))
            if size[0] != w:
                plane = plane.resize((size[0], h), Image.Resampling.BICUBIC)
                plane = Image.fromarray(np.clip(np.asarray(plane), 0.0, 1.0).astype(np.float32))
            out[i, j] = np.asarray(plane.resize(size, Image.Resampling.BICUBIC) if size[1] != h else plane)
    return torch.from_numpy(out).to(images.device)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float ``(B, 3, H, W)`` in ``[0, 1]`` -> uint8 ``(B, H, W, 3)``, rounded half to even.

    Quantised where the tensor is, so a GPU result crosses to the host once, as uint8 (a quarter of the
    float32 bytes); float32 ``x * 255`` and ``round`` give the same bits on every device."""
    import torch

    q = (images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return q.permute(0, 2, 3, 1).cpu().numpy()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float ``(B, 3, H, W)`` in ``[0, 1]`` -> list of RGB PIL images."""
    return [Image.fromarray(a) for a in tensor_to_uint8(images)]
