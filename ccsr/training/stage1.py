"""Stage 1: train the CCSR ControlNet on the truncated-diffusion objective (docs/algorithm.md §3.1-3.3).

UNet, VAE and text encoder are frozen; the prompt is the empty caption, as in the reference. Per
batch: the GT crop is degraded on the training device (Real-ESRGAN, :mod:`ccsr.data.degradation`),
both images are VAE-encoded (``z`` = GT latent, ``c`` = LR latent, the ControlNet's condition), and
:func:`stage1_losses` runs three ControlNet+UNet passes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ccsr.config import load_config
from ccsr.data.degradation_config import DegradationConfig
from ccsr.denoiser import denoise
from ccsr.diffusion import add_noise, predict_x0, training_target
from ccsr.encoding import decode_latent, encode_image, encode_prompts
from ccsr.schedule import sample_train_timesteps_upper
from ccsr.training.loop import StepOutput, TrainResult, TrainStep, train_sr_stage, weight_dtype
from ccsr.training.stage1_config import Stage1Config, Stage1Objective

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

Config = Stage1Config  # what `ccsr train stage1` loads


def stage1_losses(
    model_fn: Callable[[torch.Tensor, torch.Tensor | int], torch.Tensor],
    z: torch.Tensor,
    c: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    objective: Stage1Objective,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    prediction_type: str = "epsilon",
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    image: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The terms of CCSR stage 1 (docs/algorithm.md §3.2; three, plus an optional pixel term) and their weighted sum ``"loss"``, all fp32 scalars.

    Args:
        model_fn: ``(x_t, t) -> output``, the ControlNet+UNet prediction conditioned on ``c``, read as
            ``prediction_type`` (the scheduler's: epsilon for SD-2.1-base, v for ccsr-tiny).
        z: GT latent ``(B, 4, h, w)`` (scaled by the VAE factor); the target of both x0 terms.
        c: LR latent ``(B, 4, h, w)``; the start of the x_T term when ``objective.start_from == "lr"``.
        noise: ``(3, B, 4, h, w)``: epsilon of the three noisings (drawn when ``None``).
        timesteps: ``(B,)`` for the epsilon term, in ``[0, round(1000 t_max))`` (drawn when ``None``).

    Terms: ``eps`` = MSE(model_fn(x_t, t), target) with x_t = add_noise(z, eps1, t), target = eps1 for
    epsilon prediction (the reference), v = sqrt(abar) eps1 - sqrt(1 - abar) z for v prediction;
    ``x0`` = MSE(x0_T, z) with x0_T = predict_x0 at T = start_timestep from add_noise(start, eps2, T);
    ``x0_renoised`` = MSE(x0_tau, z) with x0_tau = predict_x0 at tau = round(1000 t_max) from
    add_noise(x0_T, eps3, tau). x0_T is not detached: the last term trains through both passes.
    ``x0_pixel`` (not in the reference; needs ``decode``, scaled latent -> image in [-1, 1], and the GT
    ``image`` in [-1, 1]) = L1(decode(x0_T), image): the one-step error where the user sees it, in pixels,
    since an equal latent MSE can decode to very different pixel errors.
    Terms whose weight is 0 are not computed (their passes are skipped).
    """
    w_eps, w_x0, w_re = objective.weight_eps, objective.weight_x0, objective.weight_x0_renoised
    w_px = objective.weight_x0_pixel
    if w_px > 0 and (decode is None or image is None):
        raise ValueError("objective.weight_x0_pixel > 0 needs decode= and image= (the GT in [-1, 1])")
    tau = sample_train_timesteps_upper(objective.t_max)
    big_t = objective.start_timestep
    z = z.float()
    if noise is None:
        noise = torch.randn((3, *z.shape), device=z.device, dtype=torch.float32)
    if timesteps is None:
        timesteps = torch.randint(0, tau, (z.shape[0],), device=z.device)
    terms: dict[str, torch.Tensor] = {}
    total = z.new_zeros(())
    if w_eps > 0:
        x_t = add_noise(z, noise[0], timesteps, alphas_cumprod)
        target = training_target(z, noise[0], timesteps, alphas_cumprod, prediction_type)
        terms["eps"] = F.mse_loss(model_fn(x_t, timesteps).float(), target)
        total = total + w_eps * terms["eps"]
    if w_x0 > 0 or w_re > 0 or w_px > 0:
        start = z if objective.start_from == "gt" else c.float()
        x_big_t = add_noise(start, noise[1], big_t, alphas_cumprod)
        x0_big_t = predict_x0(x_big_t, model_fn(x_big_t, big_t), big_t, alphas_cumprod, prediction_type)
        if w_x0 > 0:
            terms["x0"] = F.mse_loss(x0_big_t, z)
            total = total + w_x0 * terms["x0"]
        if w_px > 0:
            assert decode is not None and image is not None  # checked above
            terms["x0_pixel"] = F.l1_loss(decode(x0_big_t), image.float())
            total = total + w_px * terms["x0_pixel"]
        if w_re > 0:
            x_tau = add_noise(x0_big_t, noise[2], tau, alphas_cumprod)
            x0_tau = predict_x0(x_tau, model_fn(x_tau, tau), tau, alphas_cumprod, prediction_type)
            terms["x0_renoised"] = F.mse_loss(x0_tau, z)
            total = total + w_re * terms["x0_renoised"]
    terms["loss"] = total
    return terms


class Stage1Step(TrainStep):
    """The ControlNet is the only trainable module; see :mod:`ccsr.training.loop` for the contract."""

    def __init__(
        self,
        *,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer,
        scheduler,
        objective: Stage1Objective,
        degrade: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler, self.objective, self.degrade = (
            tokenizer,
            scheduler,
            objective,
            degrade,
        )
        for frozen in (unet, vae, text_encoder):
            frozen.eval().requires_grad_(False)
        self.controlnet = controlnet.train().requires_grad_(True)
        self.alphas_cumprod = scheduler.alphas_cumprod
        self.text_embedding: torch.Tensor | None = None

    def modules(self) -> dict[str, nn.Module]:
        return {"controlnet": self.controlnet}

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"controlnet": [p for p in self.controlnet.parameters() if p.requires_grad]}

    def enable_gradient_checkpointing(self) -> None:
        super().enable_gradient_checkpointing()
        self.unet.enable_gradient_checkpointing()  # gradients reach the ControlNet through the UNet

    def bind(self, accelerator, prepared: dict[str, nn.Module]) -> None:
        super().bind(accelerator, prepared)
        device, dtype = accelerator.device, weight_dtype(accelerator)
        for frozen in (self.unet, self.vae, self.text_encoder):
            frozen.to(device, dtype)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
        # (1, L, D), shared by the batch
        self.text_embedding = encode_prompts(self.text_encoder, self.tokenizer, self.objective.prompt, device)

    @torch.no_grad()
    def encode(self, image01: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> scaled posterior sample ``(B, 4, H/f, W/f)`` fp32 (as the reference)."""
        return encode_image(self.vae, image01)

    def __call__(self, batch: dict[str, torch.Tensor], global_step: int) -> StepOutput:
        gt = batch["gt"]
        lq = self.degrade(gt)
        z, c = self.encode(gt), self.encode(lq)
        text = self.text_embedding
        assert text is not None, "bind() encodes the prompt"

        def model_fn(x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
            return denoise(self.unet, self.controlnet, x_t, t, text, c)

        terms = stage1_losses(
            model_fn,
            z,
            c,
            self.alphas_cumprod,
            self.objective,
            prediction_type=self.scheduler.config.prediction_type,
            decode=lambda latents: decode_latent(self.vae, latents, differentiable=True),
            image=gt * 2 - 1,
        )
        loss = terms.pop("loss")
        return StepOutput({"controlnet": loss}, {f"term/{k}": float(v.detach()) for k, v in terms.items()})

    def export(self, output_dir: str | os.PathLike) -> Path:
        """Write ``output_dir/controlnet`` (release layout; ``CCSRPipeline.from_pretrained(base, controlnet=...)``)."""
        from ccsr.atomic import replace_dir_atomically
        from ccsr.models.controlnet import save_ccsr_controlnet

        controlnet = self.unwrap("controlnet")
        kind = self.scheduler.config.prediction_type
        return replace_dir_atomically(
            Path(output_dir) / "controlnet", lambda tmp: save_ccsr_controlnet(controlnet, tmp, kind)
        )

    @torch.no_grad()
    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One-step CCSR (S1) on the validation LR images: ``{"lq": bicubic, "sr": output, "gt": HR}`` in [0, 1]."""
        from ccsr.image import tensor_to_pil
        from ccsr.pipeline import CCSRPipeline, CCSRPipelineOutput

        controlnet: ControlNetModel = self.unwrap("controlnet")
        controlnet.eval()
        try:
            pipe = CCSRPipeline(
                self.unet, controlnet, self.vae, self.text_encoder, self.tokenizer, self.scheduler
            )
            lq, gt = batch["lq"].float(), batch["gt"].float()
            scale = gt.shape[-1] // lq.shape[-1]
            with self.accelerator.autocast():
                out = pipe(
                    tensor_to_pil(lq),
                    steps=1,
                    upscale=scale,
                    process_size=min(gt.shape[-2:]),
                    generator=torch.Generator().manual_seed(0),
                    output_type="pt",
                )
            assert isinstance(out, CCSRPipelineOutput) and isinstance(
                out.images, torch.Tensor
            )  # output_type="pt"
            sr = out.images
        finally:
            controlnet.train()
        lq_up = F.interpolate(lq, size=gt.shape[-2:], mode="bicubic").clamp(0, 1)
        return {"lq": lq_up, "sr": sr.float().to(gt.device), "gt": gt}


def build_step(cfg: Stage1Config) -> Stage1Step:
    """Load the frozen base model, initialise the ControlNet and the degradation from ``cfg``."""
    from ccsr.data.degradation import RealESRGANDegradation
    from ccsr.models.controlnet import build_latent_controlnet, load_ccsr_controlnet
    from ccsr.models.loading import load_components

    m = cfg.model
    parts = load_components(m.pretrained, base=m.base, vae=m.vae, load_controlnet=False)
    if m.controlnet_init is None:
        controlnet = build_latent_controlnet(
            unet=parts.unet
        )  # copies the UNet encoder (docs/algorithm.md §3.1)
    else:
        init = Path(m.controlnet_init)
        # Accept the folder itself or its parent, as the reference's subfolder="controlnet". Trained
        # weights are float32 even when the init was released in float16 (ccsr-tiny is).
        folder = init if (init / "config.json").is_file() else init / "controlnet"
        controlnet = load_ccsr_controlnet(folder, torch_dtype=torch.float32)
    degradation = DegradationConfig()  # the reference values
    if cfg.data.degradation is not None:
        if not Path(cfg.data.degradation).is_file():
            raise FileNotFoundError(
                f"data.degradation={cfg.data.degradation} not found in {Path.cwd()}: relative paths are taken from "
                "the current folder (run from the repository root), or give an absolute path, or set "
                "data.degradation=null for the built-in reference values"
            )
        degradation = load_config(DegradationConfig, cfg.data.degradation)
    return Stage1Step(
        unet=parts.unet,
        controlnet=controlnet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        scheduler=parts.scheduler,
        objective=cfg.objective,
        degrade=RealESRGANDegradation(degradation),
    )


def run(cfg: Stage1Config) -> TrainResult:
    """Train stage 1 as configured; the ControlNet is exported to ``train.output_dir/controlnet``."""
    return train_sr_stage(lambda: build_step(cfg), cfg, "ccsr-stage1")
