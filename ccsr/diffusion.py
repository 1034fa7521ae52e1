"""The only home of the x0 / add-noise arithmetic, shared by the pipeline and all training stages.

All maths runs in float32 on ``alphas_cumprod`` (docs/algorithm.md §8.3), whatever the network dtype. The
denoiser's output is read in the scheduler's ``prediction_type``: ``"epsilon"`` (SD-2.1-base and so
the official CCSR-v2 weights), ``"v_prediction"`` (Salimans & Ho 2022, "Progressive Distillation",
§4; ccsr-tiny) or ``"sample"`` (x0 itself).
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> str:
    """``prediction_type`` if this package can read it, else a ValueError naming the choices."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    return prediction_type


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
    x_t: torch.Tensor,
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """The clean latent the denoiser's output implies, in float32.

    epsilon: ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)`` (the error of eps is multiplied by
    ``sqrt(1 - abar) / sqrt(abar)``, 14.6 at t = 999 on SD's schedule); v: ``x0 = sqrt(abar) x_t -
    sqrt(1 - abar) v`` (no amplification); sample: the output itself.
    """
    a, b = _coefficients(alphas_cumprod, timesteps, x_t)
    out = model_output.float()
    if prediction_type == "epsilon":
        return (x_t.float() - b * out) / a
    if prediction_type == "v_prediction":
        return a * x_t.float() - b * out
    if prediction_type == "sample":
        return out
    check_prediction_type(prediction_type)  # raises: not one of PREDICTION_TYPES
    raise AssertionError(prediction_type)


def training_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor | int,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """What the denoiser should output for ``x_t = add_noise(x0, noise, t)``: ``noise`` (epsilon),
    ``sqrt(abar) noise - sqrt(1 - abar) x0`` (v) or ``x0`` (sample), in float32."""
    if prediction_type == "epsilon":
        return noise.float()
    if prediction_type == "v_prediction":
        a, b = _coefficients(alphas_cumprod, timesteps, x0)
        return a * noise.float() - b * x0.float()
    if prediction_type == "sample":
        return x0.float()
    check_prediction_type(prediction_type)  # raises: not one of PREDICTION_TYPES
    raise AssertionError(prediction_type)
