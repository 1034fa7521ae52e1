"""G-STD and L-STD, CCSR's stability measures across noise samples, as pure tensor functions.

Definitions (CCSR-v2 paper, Sec. IV; the authors' ``cal_iqa/iqa_G-STD.py`` and ``iqa_L-STD.py``,
docs/algorithm.md §5.2-5.3):

* **G-STD** of a metric: for every image, the population standard deviation (ddof 0, as ``np.std``)
  of that image's score over the S samples; then the mean over the N images.
* **L-STD**: for every image, the per-pixel, per-channel population standard deviation over the S
  samples of the RGB output in ``[0, 1]`` after a 4-pixel border crop, averaged over pixels and
  channels; then the mean over images (the caller averages :func:`l_std` over images).

Unlike the reference, images of different sizes are fine: L-STD is computed per image.
No heavy imports here: torch and numpy only.
"""

from __future__ import annotations

import numpy as np
import torch

#: Border cropped on every side before L-STD and the image metrics (the paper's protocol).
DEFAULT_CROP = 4


def _as_float_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x)
    # float64 stays float64 (exact tests); everything else is computed in float32.
    return t if t.dtype == torch.float64 else t.to(torch.float32)


def per_image_std(scores: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Population std over samples of each image's score.

    Args:
        scores: ``(S, N)``: ``scores[s, n]`` is the metric value of image ``n`` in sample ``s``.

    Returns:
        ``(N,)`` standard deviations (ddof 0; zero when ``S == 1``).
    """
    s = _as_float_tensor(scores)
    if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
        raise ValueError(f"scores must have shape (samples, images) with both >= 1, got {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        bad = torch.nonzero(~torch.isfinite(s))[0].tolist()
        raise ValueError(f"scores contain a non-finite value at (sample, image) = {tuple(bad)}")
    return s.std(dim=0, correction=0)


def g_std(scores: torch.Tensor | np.ndarray) -> torch.Tensor:
    """G-STD: the mean over images of the per-image population std over samples.

    Args:
        scores: ``(S, N)`` metric values, S samples (seeds) by N images.

    Returns:
        0-dim tensor. Example: ``g_std([[1, 2], [3, 6]]) == mean(std(1, 3), std(2, 6)) == 1.5``.
    """
    return per_image_std(scores).mean()


def crop_border(images: torch.Tensor, crop: int) -> torch.Tensor:
    """Remove ``crop`` pixels from every side of ``(..., H, W)``; ``crop=0`` returns the input."""
    if not isinstance(crop, int) or isinstance(crop, bool) or crop < 0:
        raise ValueError(f"crop={crop!r} must be a non-negative integer")
    if crop == 0:
        return images
    h, w = images.shape[-2:]
    if h <= 2 * crop or w <= 2 * crop:
        raise ValueError(f"image of {w}x{h} pixels is too small for a {crop}-pixel border crop")
    return images[..., crop : h - crop, crop : w - crop]


def l_std_map(images: torch.Tensor | np.ndarray, crop: int = DEFAULT_CROP) -> torch.Tensor:
    """Per-pixel standard deviation over samples, averaged over channels: the heat map of L-STD.

    Args:
        images: ``(S, C, H, W)`` float in ``[0, 1]``: the S samples of one image.
        crop: border removed on every side first (the paper uses 4).

    Returns:
        ``(H - 2*crop, W - 2*crop)``; its mean is :func:`l_std` of the same input.
    """
    x = _as_float_tensor(images)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (samples, channels, H, W), got {tuple(x.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"images must be in [0, 1] (divide 8-bit values by 255), got min={lo:.4g}, max={hi:.4g}"
        )
    x = crop_border(x, crop)
    return x.std(dim=0, correction=0).mean(dim=0)


def l_std(images: torch.Tensor | np.ndarray, crop: int = DEFAULT_CROP) -> torch.Tensor:
    """L-STD of one image: mean over pixels and channels of the population std over samples.

    Args:
        images: ``(S, C, H, W)`` float in ``[0, 1]``.
        crop: border removed on every side first.

    Returns:
        0-dim tensor. Two samples that differ by ``c`` everywhere give ``c / 2``; identical samples give 0.
    """
    return l_std_map(images, crop).mean()
