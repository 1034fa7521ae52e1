"""A differentiable SSIM loss on the luma channel, for stage 2's decoder fine-tune.

Not in the reference, whose stage 2 is MSE + LPIPS + GAN. It is here for models trained where LPIPS
cannot be used (no ImageNet trunk) and SSIM is a target, as for ccsr-tiny. It computes what the
evaluation reports: Y of BT.601 YCbCr in ``[0, 1]``, an 11x11 Gaussian window (sigma 1.5), constants
``(0.01)^2`` and ``(0.03)^2``, valid filtering and a non-negative contrast term (Wang et al. 2004 as
pyiqa computes it, without its optional downsampling), written here in plain torch so that training
does not depend on pyiqa.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: BT.601 luma of RGB in [0, 1], as MATLAB's rgb2ycbcr (offset 16/255, scale 219/255).
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> ``(B, 1, H, W)`` BT.601 Y in ``[16/255, 235/255]``."""
    w = torch.tensor(_Y_WEIGHTS, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True) + _Y_OFFSET


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image of single-channel ``(B, 1, H, W)`` tensors with data range 1; shape ``(B,)``."""
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(
            f"ssim expects two (B, 1, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim needs images of at least {window}x{window} pixels, got {tuple(x.shape[-2:])}")
    win = _gaussian_window(window, sigma, x)
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    var_x = F.conv2d(x * x, win) - mu_x**2
    var_y = F.conv2d(y * y, win) - mu_y**2
    cov = F.conv2d(x * y, win) - mu_x * mu_y
    contrast = F.relu((2 * cov + c2) / (var_x + var_y + c2))
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * contrast).mean(dim=(1, 2, 3))


def ssim_loss(img: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``1 - SSIM`` on the luma of two RGB batches in ``[-1, 1]``, averaged over the batch."""
    return 1.0 - ssim(luma((img.float() + 1) / 2), luma((gt.float() + 1) / 2)).mean()
