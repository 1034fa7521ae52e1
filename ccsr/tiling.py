"""Latent tiling for diffusion on large images (mixture-of-diffusers blending, docs/algorithm.md §1.11).

Pure tensor code: :func:`tiled_apply` knows a callable and tensors, nothing about models.
Compared with the reference: tiles clamp to the input (an input smaller than one tile works,
csslc/CCSR#50) and windows always reach the far edge. The Gaussian window is the authors' by default
(``window="reference"``: centred at ``(w - 1) / 2`` across but ``h / 2`` down, the asymmetry of their
``gaussian_weights``, inherited from mixture-of-diffusers, and computed in float64 as theirs);
``window="symmetric"`` centres it at ``(n - 1) / 2`` on both axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ccsr.options import check_tile_window


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``[0, length)`` with windows of ``min(tile, length)``."""
    if tile < 1 or stride < 1:
        raise ValueError(f"tile={tile} and stride={stride} must be positive")
    if stride > tile:
        raise ValueError(f"stride={stride} must not exceed tile={tile}, or parts of the image get no tile")
    tile = min(tile, length)
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def gaussian_weights(height: int, width: int, var: float = 0.01, window: str = "symmetric") -> torch.Tensor:
    """Separable Gaussian window ``(height, width)``.

    ``g(x) = exp(-(x - m)^2 / (2 var T^2)) / sqrt(2 pi var)``. ``"symmetric"``: ``m = (T - 1) / 2`` on both
    axes, float32. ``"reference"``: the authors' ``gaussian_weights`` (``pipelines/pipeline_ccsr.py``):
    ``m = (w - 1) / 2`` across, ``m = h / 2`` down, float64 as their NumPy computation.
    """

    if check_tile_window(window) == "reference":

        def ref(n: int, m: float) -> list[float]:  # their expression, evaluated in their order
            return [
                np.exp(-(x - m) * (x - m) / (n * n) / (2 * var)) / np.sqrt(2 * np.pi * var) for x in range(n)
            ]

        return torch.from_numpy(np.outer(ref(height, height / 2), ref(width, (width - 1) / 2)))

    def g(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64)
        m = (n - 1) / 2
        return torch.exp(-((x - m) ** 2) / (n * n * 2 * var)) / math.sqrt(2 * math.pi * var)

    return torch.outer(g(height), g(width)).float()


def tile_windows(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """``(top, left, tile_h, tile_w)`` for every window over a ``height x width`` grid."""
    th, tw = min(tile, height), min(tile, width)
    return [
        (y, x, th, tw) for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)
    ]


def tiled_apply(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    cond: torch.Tensor,
    tile: int,
    stride: int,
    batch_tiles: int = 1,
    window: str = "symmetric",
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Apply ``fn(x_tile, cond_tile) -> out_tile`` over overlapping tiles and blend with Gaussian weights.

    ``x`` and ``cond`` are ``(B, C, H, W)`` on the same grid; the output has ``fn``'s channel count.
    Up to ``batch_tiles`` tiles are concatenated along the batch axis into one call. ``window``: see
    :func:`gaussian_weights`. Accumulation is float32 (with ``"reference"`` each weighted tile is formed in
    float64 first, as the authors' float64 weights promote it); the result is float32. ``progress(n)``
    is called after each call with its ``n`` tiles.
    """
    b, _, h, w = x.shape
    if cond.shape[-2:] != (h, w):
        raise ValueError(f"cond {tuple(cond.shape)} must share the spatial size of x {tuple(x.shape)}")
    if batch_tiles < 1:
        raise ValueError(f"batch_tiles={batch_tiles} must be >= 1")
    windows = tile_windows(h, w, tile, stride)
    if len(windows) == 1:
        out1 = fn(x, cond).float()
        if progress is not None:
            progress(1)
        return out1
    weight = gaussian_weights(windows[0][2], windows[0][3], window=window).to(x.device)
    out: torch.Tensor | None = None
    total = torch.zeros((1, 1, h, w), device=x.device, dtype=torch.float32)
    for i in range(0, len(windows), batch_tiles):
        group = windows[i : i + batch_tiles]
        xs = torch.cat([x[:, :, y : y + th, xx : xx + tw] for y, xx, th, tw in group])
        cs = torch.cat([cond[:, :, y : y + th, xx : xx + tw] for y, xx, th, tw in group])
        res = fn(xs, cs).float()
        if out is None:
            out = torch.zeros((b, res.shape[1], h, w), device=x.device, dtype=torch.float32)
        for k, (y, xx, th, tw) in enumerate(group):
            out[:, :, y : y + th, xx : xx + tw] += res[k * b : (k + 1) * b] * weight
            total[:, :, y : y + th, xx : xx + tw] += weight
        if progress is not None:
            progress(len(group))
    assert out is not None
    return out / total


def latent_tiles(tile_size: int | None, tile_stride: int | None, factor: int) -> tuple[int, int] | None:
    """``(size, stride)`` of the latent tiles for windows of ``tile_size`` / ``tile_stride`` pixels (stride
    default: half the size); None: no tiling."""
    if tile_size is None:
        return None
    stride = tile_stride if tile_stride is not None else tile_size // 2
    m = max(factor, 8)
    if tile_size % m or stride % m or stride <= 0 or stride > tile_size:
        raise ValueError(
            f"tile_size={tile_size} and tile_stride={stride} must be multiples of {m} with 0 < stride <= size"
        )
    return tile_size // factor, stride // factor


def tile_counter(callback: Callable[[int, int], None] | None, total: int) -> Callable[[int], None]:
    """Counts the tiles done over all evaluations and reports ``(done, total)`` to ``callback``."""
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        if callback is not None:
            callback(done[0], total)

    return progress
