"""Colour correction of the SR output against the bicubic-upsampled LR (docs/algorithm.md §1.9, from StableSR).

Tensors are float ``(B, 3, H, W)`` in ``[0, 1]``; results are clamped to ``[0, 1]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ccsr.options import (  # noqa: F401  (COLOR_FIXES: see apply_color_fix)
    COLOR_FIXES,
    WAVELET_LEVELS,
    check_color_fix,
    check_wavelet_levels,
)

ColorFix = Literal["adain", "wavelet", "none"]


def _mean_std(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(2)
    # Unbiased variance + 1e-5, as the reference (torch.var default).
    return flat.mean(-1)[..., None, None], (flat.var(-1, unbiased=True) + eps).sqrt()[..., None, None]


def adain_color_fix(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Give ``target`` the per-channel mean and std of ``source`` (whole-image statistics)."""
    if target.shape[:2] != source.shape[:2]:
        raise ValueError(
            f"adain: target {tuple(target.shape)} and source {tuple(source.shape)} differ in batch/channels"
        )
    t_mean, t_std = _mean_std(target.float())
    s_mean, s_std = _mean_std(source.float())
    return ((target.float() - t_mean) / t_std * s_std + s_mean).clamp(0, 1)


def _blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    kernel = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=x.dtype, device=x.device) / 16
    kernel = kernel.expand(x.shape[1], 1, 3, 3)
    x = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(x, kernel, groups=x.shape[1], dilation=radius)


def wavelet_decompose(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """A-trous decomposition: returns ``(high, low)`` with ``high + low == x``."""
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _blur(x, 2**i)
        high = high + (x - low)
        x = low
    return high, x


def wavelet_color_fix(
    target: torch.Tensor, source: torch.Tensor, levels: int = WAVELET_LEVELS
) -> torch.Tensor:
    """High frequencies of ``target`` plus low frequencies of ``source`` (same size required)."""
    if target.shape != source.shape:
        raise ValueError(f"wavelet: target {tuple(target.shape)} and source {tuple(source.shape)} must match")
    high, _ = wavelet_decompose(target.float(), levels)
    _, low = wavelet_decompose(source.float(), levels)
    return (high + low).clamp(0, 1)


def apply_color_fix(
    target: torch.Tensor, source: torch.Tensor, method: str, wavelet_levels: int = WAVELET_LEVELS
) -> torch.Tensor:
    """Dispatch on ``method`` in :data:`COLOR_FIXES` (or the authors' alias ``nofix``); ``wavelet_levels``
    is used by ``"wavelet"`` only."""
    method = check_color_fix(method)
    check_wavelet_levels(wavelet_levels)
    if method == "adain":
        return adain_color_fix(target, source)
    if method == "wavelet":
        return wavelet_color_fix(target, source, wavelet_levels)
    return target.float().clamp(0, 1)
