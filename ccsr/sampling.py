"""The CCSR-v2 sampler (docs/algorithm.md §1.5): the one function that turns an LR latent into the clean
latent the decoder reads, used by :class:`ccsr.pipeline.CCSRPipeline` and by stage-2 training.

Extraction step at the start timestep from the noised LR latent, re-noising to ``tau``, a truncated DDPM loop
with optional classifier-free guidance, and the x0 read-out at ``t_min``. Every random draw after the
starting noise (re-noising, DDPM variance) comes from ``generator``, in that order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.utils.torch_utils import randn_tensor

from ccsr.denoiser import denoise
from ccsr.diffusion import add_noise, predict_x0
from ccsr.encoding import GeneratorArg
from ccsr.schedule import DEFAULT_START_TIMESTEP, CCSRSchedule
from ccsr.tiling import tiled_apply

InitialPrompt = Literal["reference", "positive", "cfg"]
INITIAL_PROMPTS = ("reference", "positive", "cfg")


@dataclass(frozen=True)
class Prompts:
    """Text conditioning: ``positive`` / ``negative`` embeddings ``(1, L, D)`` and the guidance scale.

    ``initial`` conditions the extraction step when guiding: ``"reference"`` the negative prompt without
    guidance (the authors' code and results, docs/algorithm.md §8.6), ``"positive"`` the positive prompt,
    ``"cfg"`` guidance there too."""

    positive: torch.Tensor
    negative: torch.Tensor | None = None
    guidance_scale: float = 1.0
    initial: InitialPrompt = "reference"

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0

    def __post_init__(self) -> None:
        if (self.guided or self.initial == "cfg") and self.negative is None:
            raise ValueError(f"guidance_scale={self.guidance_scale} > 1 needs a negative prompt embedding")


@dataclass(frozen=True)
class Tiles:
    """Latent tiling: window and stride in latent pixels, tiles per network call, blending window."""

    size: int
    stride: int
    batch: int = 1
    window: str = "reference"
    progress: Callable[[int], None] | None = None  # called with the tiles of each network call


def _model_output(
    unet, controlnet, prompts: Prompts, z_lr: torch.Tensor, tiles: Tiles | None, conditioning_scale: float
) -> Callable[[torch.Tensor, int, bool, torch.Tensor], torch.Tensor]:
    """``(x_t, t, guided, embedding) -> float32 output``: one evaluation, guided or not, tiled or not."""
    g = prompts.guidance_scale

    def at(x: torch.Tensor, t: int, guided: bool, emb: torch.Tensor) -> torch.Tensor:
        def fn(xt: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
            if not guided:
                return denoise(unet, controlnet, xt, t, emb, zt, conditioning_scale).float()
            n, negative = xt.shape[0], prompts.negative
            assert negative is not None  # Prompts checks it when guiding
            both = torch.cat([negative.expand(n, -1, -1), prompts.positive.expand(n, -1, -1)])
            x2, z2 = torch.cat([xt, xt]), torch.cat([zt, zt])
            e_neg, e_pos = denoise(unet, controlnet, x2, t, both, z2, conditioning_scale).float().chunk(2)
            return e_neg + g * (e_pos - e_neg)

        if tiles is None:
            return fn(x, z_lr)
        return tiled_apply(fn, x, z_lr, tiles.size, tiles.stride, tiles.batch, tiles.window, tiles.progress)

    return at


@torch.no_grad()
def sample_clean_latent(
    unet,
    controlnet,
    scheduler,
    schedule: CCSRSchedule,
    z_lr: torch.Tensor,
    noise: torch.Tensor,
    prompts: Prompts,
    *,
    start_timestep: int = DEFAULT_START_TIMESTEP,
    start_point: Literal["lr", "noise"] = "lr",
    conditioning_scale: float = 1.0,
    tiles: Tiles | None = None,
    generator: GeneratorArg = None,
) -> torch.Tensor:
    """The latent CCSR decodes, float32 ``(B, C, h, w)``, for ``z_lr`` and starting ``noise`` of that shape.

    ``scheduler`` must have had ``set_timesteps(schedule.num_inference_steps)``. ``start_point="noise"``
    starts from ``noise`` itself instead of the LR latent noised to ``start_timestep``."""
    alphas, kind = scheduler.alphas_cumprod, scheduler.config.prediction_type
    model_at = _model_output(unet, controlnet, prompts, z_lr, tiles, conditioning_scale)
    x = add_noise(z_lr, noise, start_timestep, alphas) if start_point == "lr" else noise
    if schedule.start_timestep is not None:
        t0 = schedule.start_timestep
        if prompts.initial == "cfg" and prompts.guided:
            out = model_at(x, t0, True, prompts.positive)
        else:
            use_negative = prompts.guided and prompts.initial == "reference"
            out = model_at(x, t0, False, prompts.negative if use_negative else prompts.positive)  # type: ignore[arg-type]
        x0 = predict_x0(x, out, t0, alphas, kind)
        if schedule.loop:
            renoise = randn_tensor(tuple(x.shape), generator=generator, device=x.device, dtype=torch.float32)
            x = add_noise(x0, renoise, schedule.tau, alphas)  # type: ignore[arg-type]
        else:
            x = x0
    for i, t in enumerate(schedule.loop):
        out = model_at(x, t, prompts.guided, prompts.positive)
        if schedule.final_x0 and i == len(schedule.loop) - 1:
            x = predict_x0(x, out, t, alphas, kind)
        else:
            x = scheduler.step(out, t, x, generator=generator, return_dict=False)[0].float()
    return x
