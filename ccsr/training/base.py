"""Train the base latent-diffusion UNet from scratch (``ccsr train base``): the prior that SD-2.1-base
is for the full CCSR model, here learnt on a trained autoencoder's latents.

Objective (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Algorithm 1, in latent space as
Rombach et al. 2022): ``t ~ U{0, ..., 999}``, ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps`` on the
SD-2.1 schedule (:data:`ccsr.models.tiny.SD21_SCHEDULER`), ``L = MSE(net(x_t, t, text), target)`` with
target = eps (SD's epsilon prediction) or v = sqrt(abar_t) eps - sqrt(1 - abar_t) z (the architecture's
``prediction_type: v_prediction``, as ccsr-tiny: its one-step x0 does not amplify the network's error).
The text encoder is built once (random, frozen) and shipped with the model; CCSR only ever feeds it
fixed prompts. The export is a base-model folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``)
that ``ccsr train stage1`` takes as ``model.pretrained``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ccsr.atomic import replace_dir_atomically
from ccsr.diffusion import add_noise, predict_x0, training_target
from ccsr.encoding import decode_latent, encode_image, encode_prompts, vae_scale_factor
from ccsr.quiet import quiet_loading
from ccsr.training.loop import StepOutput, TrainResult, TrainStep, train_configured, weight_dtype
from ccsr.training.scratch_config import BaseConfig, BaseObjective

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

Config = BaseConfig  # what `ccsr train base` loads
MODEL_DIR = "model"  # export sub-folder of train.output_dir


class BaseStep(TrainStep):
    """The UNet is the only trainable module; VAE and text encoder are frozen."""

    def __init__(self, *, unet, vae, text_encoder, tokenizer, scheduler, objective: BaseObjective) -> None:
        self.unet = unet.train().requires_grad_(True)
        self.vae, self.text_encoder = (
            vae.eval().requires_grad_(False),
            text_encoder.eval().requires_grad_(False),
        )
        self.tokenizer, self.scheduler, self.objective = tokenizer, scheduler, objective
        self.alphas_cumprod = scheduler.alphas_cumprod
        self.prompt_embeddings: torch.Tensor | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"unet": list(self.unet.parameters())}

    def bind(self, accelerator, prepared: dict[str, nn.Module]) -> None:
        super().bind(accelerator, prepared)
        device = accelerator.device
        self.vae.to(device, weight_dtype(accelerator))
        self.text_encoder.to(device, weight_dtype(accelerator))
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
        self.prompt_embeddings = encode_prompts(
            self.text_encoder, self.tokenizer, self.objective.prompts, device
        )

    @torch.no_grad()
    def encode(self, image01: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> scaled posterior sample ``(B, C, H/f, W/f)`` fp32."""
        return encode_image(self.vae, image01)

    def __call__(self, batch: dict[str, torch.Tensor], global_step: int) -> StepOutput:
        z = self.encode(batch["gt"])
        b = z.shape[0]
        t = torch.randint(0, len(self.alphas_cumprod), (b,), device=z.device)
        noise = torch.randn_like(z)
        x_t = add_noise(z, noise, t, self.alphas_cumprod)
        which = torch.randint(0, len(self.objective.prompts), (b,), device=z.device)
        assert self.prompt_embeddings is not None, "bind() encodes the prompts"
        emb = self.prompt_embeddings[which]
        dtype = next(self.unet.parameters()).dtype
        out = self.unet(x_t.to(dtype), t, encoder_hidden_states=emb.to(dtype), return_dict=False)[0]
        target = training_target(z, noise, t, self.alphas_cumprod, self.scheduler.config.prediction_type)
        loss = F.mse_loss(out.float(), target)
        return StepOutput({"unet": loss})

    def export(self, output_dir: str | os.PathLike) -> Path:
        """Write ``output_dir/model/{unet,vae,text_encoder,tokenizer,scheduler}`` (a base-model folder)."""
        unet: UNet2DConditionModel = self.unwrap("unet")
        vae, text_encoder = self.vae, self.text_encoder

        def write(tmp: Path) -> None:
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
            # Frozen modules may have been cast to the mixed-precision dtype: ship fp32 copies.
            vae_dtype, te_dtype = vae.dtype, text_encoder.dtype
            vae.to(torch.float32).save_pretrained(tmp / "vae", safe_serialization=True)
            with quiet_loading():
                text_encoder.to(torch.float32).save_pretrained(tmp / "text_encoder", safe_serialization=True)
            vae.to(vae_dtype)
            text_encoder.to(te_dtype)
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            self.scheduler.save_pretrained(tmp / "scheduler")

        return replace_dir_atomically(Path(output_dir) / MODEL_DIR, write)

    @torch.no_grad()
    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"gt": crops, "sample": ancestral DDPM samples}`` in ``[0, 1]``: what the prior dreams up
        with the first prompt (``objective.validation_steps`` steps, seed 0)."""
        from diffusers import DDPMScheduler

        unet: UNet2DConditionModel = self.unwrap("unet")
        unet.eval()
        try:
            gt = batch["gt"].float()
            f = vae_scale_factor(self.vae)
            shape = (gt.shape[0], unet.config.in_channels, gt.shape[2] // f, gt.shape[3] // f)
            g = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(shape, generator=g).to(gt.device)
            sched = DDPMScheduler.from_config(self.scheduler.config)
            sched.set_timesteps(self.objective.validation_steps)
            dtype = next(unet.parameters()).dtype
            assert self.prompt_embeddings is not None, "bind() encodes the prompts"
            emb = self.prompt_embeddings[:1].expand(shape[0], -1, -1).to(dtype)
            for i, t in enumerate(sched.timesteps):
                out = unet(x.to(dtype), t.to(gt.device), encoder_hidden_states=emb, return_dict=False)[
                    0
                ].float()
                if i == len(sched.timesteps) - 1:
                    x = predict_x0(x, out, int(t), self.alphas_cumprod, sched.config.prediction_type)
                else:
                    x = sched.step(out, t, x, generator=g, return_dict=False)[0].float()
            img = decode_latent(self.vae, x)
        finally:
            unet.train()
        return {"gt": gt, "sample": (img / 2 + 0.5).clamp(0, 1)}


def build_step(cfg: BaseConfig) -> BaseStep:
    """The trained VAE (``model.vae``), a random text encoder and UNet of ``model.arch`` (or ``model.init``)."""
    from diffusers import AutoencoderKL

    from ccsr.config import load_config
    from ccsr.models.tiny import TinySpec, build_tiny_components

    spec = load_config(TinySpec, cfg.model.arch)
    unet, _, _, text_encoder, tokenizer, scheduler = build_tiny_components(spec, seed=cfg.model.init_seed)
    vae = AutoencoderKL.from_pretrained(cfg.model.vae)
    if vae.config.latent_channels != unet.config.in_channels:
        raise ValueError(
            f"model.vae has {vae.config.latent_channels} latent channels but {cfg.model.arch} gives the UNet "
            f"{unet.config.in_channels}; set latent_channels to the same value"
        )
    if cfg.model.init is not None:
        from ccsr.models.loading import load_components

        parts = load_components(cfg.model.init, load_controlnet=False)
        unet, text_encoder, tokenizer = parts.unet, parts.text_encoder, parts.tokenizer
    return BaseStep(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        objective=cfg.objective,
    )


def run(cfg: BaseConfig) -> TrainResult:
    """Train as configured; the base model is exported to ``train.output_dir/model``."""
    from ccsr.data.datasets import HQImageDataset

    step = build_step(cfg)
    data = HQImageDataset.from_config(cfg.data, cfg.train.seed)
    first_four = torch.utils.data.Subset(data, list(range(min(4, len(data)))))
    return train_configured(step, data, cfg, first_four, "ccsr-base")
