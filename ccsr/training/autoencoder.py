"""Train the AutoencoderKL from scratch (``ccsr train autoencoder``): the first stage of a CCSR model
for a domain where SD's VAE does not fit, and of ccsr-tiny.

Objective (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", §3,
without its perceptual and GAN terms): ``L = rec(D(z), x) + kl_weight * KL(q(z|x) || N(0, I))`` with
``z ~ q(z|x)``. At export, ``scaling_factor`` is set to ``1 / std(z)`` over fixed training crops, so
that scaled latents have unit variance, as SD's 0.18215 was chosen (ibid., §4.3.2 / Appendix G).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ccsr.atomic import replace_dir_atomically
from ccsr.training.loop import StepOutput, TrainResult, TrainStep, train_configured
from ccsr.training.scratch_config import AutoencoderConfig, AutoencoderObjective

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

Config = AutoencoderConfig  # what `ccsr train autoencoder` loads


def autoencoder_losses(
    vae: AutoencoderKL, x: torch.Tensor, objective: AutoencoderObjective
) -> dict[str, torch.Tensor]:
    """``x``: ``(B, 3, H, W)`` in ``[-1, 1]``. Returns fp32 scalars ``rec``, ``kl`` and their sum ``loss``."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample.float()
    x = x.float()
    rec = F.l1_loss(recon, x) if objective.reconstruction == "l1" else F.mse_loss(recon, x)
    # diffusers' kl() sums over (C, h, w); divide by the element count for a per-element mean.
    kl = posterior.kl().float().mean() / posterior.mean[0].numel()
    return {"rec": rec, "kl": kl, "loss": rec + objective.kl_weight * kl}


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, images01: torch.Tensor, batch_size: int = 8) -> float:
    """``1 / std`` of the posterior means of ``images01`` ``(N, 3, H, W)`` in ``[0, 1]``."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    zs = [
        vae.encode((images01[i : i + batch_size] * 2 - 1).to(device, dtype)).latent_dist.mean.float().cpu()
        for i in range(0, len(images01), batch_size)
    ]
    std = torch.cat(zs).std().item()
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"latent std is {std}: the autoencoder collapsed; lower the learning rate")
    return 1.0 / std


class AutoencoderStep(TrainStep):
    """The VAE is the only module; see :mod:`ccsr.training.loop` for the contract."""

    def __init__(
        self, vae: AutoencoderKL, objective: AutoencoderObjective, calibration: torch.Tensor
    ) -> None:
        self.vae = vae.train().requires_grad_(True)
        self.objective = objective
        self.calibration = calibration  # (N, 3, H, W) in [0, 1], CPU: fixed crops for scaling_factor

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"vae": list(self.vae.parameters())}

    def __call__(self, batch: dict[str, torch.Tensor], global_step: int) -> StepOutput:
        terms = autoencoder_losses(self.vae, batch["gt"] * 2 - 1, self.objective)
        loss = terms.pop("loss")
        return StepOutput({"vae": loss}, {f"term/{k}": float(v.detach()) for k, v in terms.items()})

    def export(self, output_dir: str | os.PathLike) -> Path:
        """Write ``output_dir/vae`` with ``scaling_factor`` measured on the calibration crops."""
        vae: AutoencoderKL = self.unwrap("vae")
        was_training = vae.training
        vae.eval()
        try:
            vae.register_to_config(scaling_factor=latent_scaling_factor(vae, self.calibration))
        finally:
            vae.train(was_training)
        return replace_dir_atomically(
            Path(output_dir) / "vae", lambda tmp: vae.save_pretrained(tmp, safe_serialization=True)
        )

    @torch.no_grad()
    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"gt": x, "reconstruction": D(mean of q(z|x))}`` in ``[0, 1]``."""
        vae: AutoencoderKL = self.unwrap("vae")
        vae.eval()
        try:
            gt = batch["gt"].float()
            z = vae.encode((gt * 2 - 1).to(vae.dtype)).latent_dist.mean
            rec = (vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)
        finally:
            vae.train()
        return {"gt": gt, "reconstruction": rec}


class FixedCrops(torch.utils.data.Dataset):
    """``{"gt": crops[i]}``: fixed images for validation (the loop logs the first few)."""

    def __init__(self, crops: torch.Tensor) -> None:
        self.crops = crops

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"gt": self.crops[index]}


def calibration_crops(dataset, n: int, seed: int) -> torch.Tensor:
    """``n`` crops of ``dataset`` (``{"gt": (3, R, R)}`` items), chosen by ``seed``: ``(n, 3, R, R)``."""
    dataset.set_epoch(0)
    idx = np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)), replace=False)
    return torch.stack([dataset[int(i)]["gt"] for i in sorted(idx)])


def build_vae(cfg: AutoencoderConfig) -> nn.Module:
    """A random AutoencoderKL of ``cfg.model.arch`` (seeded; ``objective.init_logvar`` applied), or the
    one in ``cfg.model.init``."""
    from diffusers import AutoencoderKL

    from ccsr.config import load_config
    from ccsr.models.tiny import TinySpec, build_tiny_components

    if cfg.model.init is not None:
        return AutoencoderKL.from_pretrained(cfg.model.init)
    spec = load_config(TinySpec, cfg.model.arch)
    vae = build_tiny_components(spec, seed=cfg.model.init_seed)[2]
    if cfg.objective.init_logvar is not None:
        with torch.no_grad():  # quant_conv's output is (mean, logvar) along channels
            vae.quant_conv.bias[spec.latent_channels :] = cfg.objective.init_logvar
    return vae


def run(cfg: AutoencoderConfig) -> TrainResult:
    """Train as configured; the VAE is exported to ``train.output_dir/vae``."""
    from ccsr.data.datasets import HQImageDataset

    vae = build_vae(cfg)
    data = HQImageDataset.from_config(cfg.data, cfg.train.seed)
    crops = calibration_crops(data, cfg.objective.calibration_crops, cfg.train.seed)
    step = AutoencoderStep(vae, cfg.objective, crops)
    return train_configured(step, data, cfg, FixedCrops(crops), "ccsr-autoencoder")
