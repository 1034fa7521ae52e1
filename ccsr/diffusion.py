"""The only home of the x0 / add-noise arithmetic, shared by the pipeline and both training stages.

All maths runs in float32 on ``alphas_cumprod`` (spec §8.3), whatever the network dtype.
"""

from __future__ import annotations

import torch


def _coefficients(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor | int, like: torch.Tensor):
    t = torch.as_tensor(timesteps, device=alphas_cumprod.device).long().reshape(-1)
    abar = alphas_cumprod.to(torch.float32)[t]
    shape = (-1,) + (1,) * (like.ndim - 1)
    sqrt_abar = abar.sqrt().reshape(shape).to(like.device)
    sqrt_one_minus = (1.0 - abar).sqrt().reshape(shape).to(like.device)
    return sqrt_abar, sqrt_one_minus


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` in float32.

    Shapes: ``x0`` and ``noise`` ``(B, C, h, w)``; ``timesteps`` an int or ``(B,)``.
    """
    a, b = _coefficients(alphas_cumprod, timesteps, x0)
    return a * x0.float() + b * noise.float()


def predict_x0(
    x_t: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor | int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` in float32 (epsilon prediction)."""
    a, b = _coefficients(alphas_cumprod, timesteps, x_t)
    return (x_t.float() - b * eps.float()) / a
