"""Stage 2 of CCSR-v2: GAN fine-tuning of the VAE decoder for deterministic detail (docs/algorithm.md §4).

The frozen stage-1 model (SD-2.1-base UNet + the CCSR ControlNet) turns each LR image into a
clean latent exactly as inference does (default: one step at t=999 from the noised LR latent);
only the VAE decoder learns to decode it into the HR image:

    L_G = w_rec * {L1|L2}(D(x0), x_HR) + w_lpips * LPIPS(D(x0), x_HR) + w_gan * hinge_G(Disc(D(x0), c))
    L_D = w_disc * hinge_D(Disc(x_HR, c), Disc(D(x0).detach(), c)),   c = DINOv2-CLS(x_LR)

with the generator's GAN term switched on after ``begin_disc`` steps. Fixes over the reference
(``train_ccsr_stage2.py`` of CCSR-v2.0): LPIPS is on (it was commented out, issue #40) and is *not*
zeroed before ``begin_disc``; resume works (the shared loop restores both models, optimizers and
RNG states); no hard-coded weight paths; ``accelerator.unwrap_model`` instead of ``--is_module``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ccsr.config import load_config
from ccsr.data.degradation_config import DegradationConfig
from ccsr.encoding import GeneratorArg, encode_image, encode_prompts, vae_scale_factor
from ccsr.models.discriminator import ProjectedDiscriminator
from ccsr.sampling import Prompts, sample_clean_latent
from ccsr.schedule import make_schedule
from ccsr.training.gan_losses import hinge_discriminator_loss, hinge_generator_loss
from ccsr.training.loop import StepOutput, TrainResult, TrainStep, train_sr_stage, weight_dtype
from ccsr.training.stage2_config import Stage2Config

Config = Stage2Config  # what `ccsr train stage2` loads


# ----------------------------------------------------------------------------- generator path
class VAEDecoder(nn.Module):
    """Scaled-back latent ``(B, 4, h, w)`` -> image ``(B, 3, 8h, 8w)`` in about ``[-1, 1]``.

    Holds the VAE's ``post_quant_conv`` and ``decoder`` (the same module objects, so the VAE itself is
    updated) behind a ``forward`` that accelerate/DDP can wrap; the frozen encoder stays outside, which
    also keeps it out of the checkpoints.
    """

    def __init__(self, vae) -> None:
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into ``module``'s parameters (the discriminator during the generator loss)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# ----------------------------------------------------------------------------- the step
class Stage2Step(TrainStep):
    """Decoder + discriminator training step for :func:`ccsr.training.loop.train`.

    Batches are dicts of ``(B, 3, H, W)`` tensors in ``[0, 1]`` as :mod:`ccsr.data.datasets` makes them:
    ``{"gt"}`` (the LR image is then made on the device by the Real-ESRGAN degradation of
    ``data.degradation``, as in stage 1) or ``{"lq", "gt"}`` (a paired LR, any size; it is resized
    bicubically to the GT size, the canvas inference would see).
    """

    def __init__(self, cfg: Stage2Config) -> None:
        from ccsr.models.discriminator import build_discriminator
        from ccsr.models.loading import load_components

        self.cfg = cfg
        m, s, obj = cfg.model, cfg.sampling, cfg.objective
        # LPIPS first: a missing weights file should fail before minutes of model loading.
        self.lpips = None
        if obj.weight_lpips > 0:
            from ccsr.training.perceptual import build_lpips

            self.lpips = build_lpips(cfg.lpips.net, cfg.lpips.backbone_weights)
        c = load_components(m.pretrained, m.base, m.controlnet, m.vae)
        assert c.controlnet is not None, "load_components loads the ControlNet by default"
        self.unet, self.stage1_controlnet, self.scheduler = c.unet, c.controlnet, c.scheduler
        self.vae, self.vae_source = c.vae, Path(c.paths.vae)
        self.scheduler.set_timesteps(s.num_inference_steps)
        self.schedule = make_schedule(
            [int(t) for t in self.scheduler.timesteps], s.t_max, s.t_min, s.start_timestep
        )
        # float32 on the CPU; bind() moves them to the training device
        self.text = encode_prompts(c.text_encoder, c.tokenizer, s.prompt, "cpu").float()
        self.negative_text = (
            encode_prompts(c.text_encoder, c.tokenizer, s.negative_prompt, "cpu").float()
            if s.guidance_scale > 1.0
            else None
        )
        del c  # the text encoder is not needed again
        from ccsr.data.degradation import RealESRGANDegradation

        deg = cfg.data.degradation
        self.degrade = RealESRGANDegradation(
            DegradationConfig() if deg is None else load_config(DegradationConfig, deg)
        )

        # Only the listed VAE parts train; everything else (encoder, quant_conv) stays frozen.
        self.vae.requires_grad_(False)
        for part in obj.trainable:
            getattr(self.vae, part).requires_grad_(True)
        self.decoder = VAEDecoder(self.vae).train()
        with torch.random.fork_rng(devices=[]):
            # The heads' initial weights depend on train.seed only, not on what ran before.
            torch.manual_seed(cfg.train.seed)
            # DiscriminatorConfig's fields are build_discriminator's arguments, one for one.
            self.discriminator = build_discriminator(**dataclasses.asdict(cfg.discriminator)).train()

    # -- the loop's contract
    def modules(self) -> dict[str, nn.Module]:
        return {"decoder": self.decoder, "discriminator": self.discriminator}

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "generator": [p for p in self.decoder.parameters() if p.requires_grad],
            "discriminator": [p for p in self.discriminator.parameters() if p.requires_grad],
        }

    def bind(self, accelerator, prepared: dict[str, nn.Module]) -> None:
        super().bind(accelerator, prepared)
        device, dtype = accelerator.device, weight_dtype(accelerator)
        # Frozen networks run in the mixed-precision dtype as in the reference; the VAE stays float32
        # because its decoder holds the trained (master) weights.
        self.unet.to(device, dtype)
        self.stage1_controlnet.to(device, dtype)
        self.vae.to(device)
        self.text = self.text.to(device)
        if self.negative_text is not None:
            self.negative_text = self.negative_text.to(device)
        if self.lpips is not None:
            self.lpips.to(device)

    def enable_gradient_checkpointing(self) -> None:
        self.vae.enable_gradient_checkpointing()

    def gan_active(self, global_step: int) -> bool:
        """The reference's rule: the generator's GAN term is off while ``global_step <= begin_disc``."""
        return self.cfg.objective.weight_gan > 0 and global_step > self.cfg.objective.begin_disc

    def clean_latent(self, lq: torch.Tensor, generator: GeneratorArg = None) -> torch.Tensor:
        """The frozen stage-1 model's latent for ``lq`` ``(B, 3, H, W)`` in ``[0, 1]``: noise is drawn first,
        then the posterior sample, as in the pipeline."""
        s = self.cfg.sampling
        f = vae_scale_factor(self.vae)
        shape = (lq.shape[0], self.unet.config.in_channels, lq.shape[2] // f, lq.shape[3] // f)
        noise = randn_tensor(shape, generator=generator, device=lq.device, dtype=torch.float32)
        z_lr = encode_image(self.vae, lq, generator, s.lr_latent)
        prompts = Prompts(self.text, self.negative_text, s.guidance_scale)
        return sample_clean_latent(
            self.unet,
            self.stage1_controlnet,
            self.scheduler,
            self.schedule,
            z_lr,
            noise,
            prompts,
            start_timestep=s.start_timestep,
            generator=generator,
        )

    def lr_and_gt(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lq, gt)``: the LR canvas in ``[0, 1]`` and the GT in ``[-1, 1]``, both ``(B, 3, H, W)``."""
        gt = batch["gt"].float()
        lq = batch["lq"].float() if "lq" in batch else self.degrade(gt)
        if lq.shape[-2:] != gt.shape[-2:]:
            lq = F.interpolate(lq, size=gt.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        return lq, gt * 2 - 1

    def __call__(self, batch: dict[str, Any], global_step: int) -> StepOutput:
        obj = self.cfg.objective
        lq, gt = self.lr_and_gt(batch)
        disc = self.unwrap("discriminator")
        assert isinstance(disc, ProjectedDiscriminator)  # the bare module behind the prepared one
        with torch.no_grad():
            z = self.clean_latent(lq)
            cond = disc.condition(lq)
        # The reference clamps before every loss; gradients stop where the decoder overshoots.
        img = self.decoder(z / self.vae.config.scaling_factor).float().clamp(-1, 1)

        rec = F.l1_loss(img, gt) if obj.reconstruction == "l1" else F.mse_loss(img, gt)
        loss_g = obj.weight_reconstruction * rec
        logs = {"loss/reconstruction": float(rec.detach())}
        if self.lpips is not None:
            lp = self.lpips(img, gt).mean()
            loss_g = loss_g + obj.weight_lpips * lp
            logs["loss/lpips"] = float(lp.detach())
        if obj.weight_ssim > 0:
            from ccsr.training.ssim import ssim_loss

            ss = ssim_loss(img, gt)
            loss_g = loss_g + obj.weight_ssim * ss
            logs["loss/ssim"] = float(ss.detach())
        if self.gan_active(global_step):
            # The bare module, frozen: no gradient from L_G may reach the heads, and DDP must not see this pass.
            with frozen(disc):
                g_adv = hinge_generator_loss(disc(img, cond))
            loss_g = loss_g + obj.weight_gan * g_adv
            logs["loss/g_adv"] = float(g_adv.detach())

        # One discriminator pass over real and fake together (one DDP forward per iteration).
        logits = self.discriminator(torch.cat([gt, img.detach()]), torch.cat([cond, cond]))
        real, fake = logits.chunk(2)
        loss_d = obj.weight_discriminator * hinge_discriminator_loss(real, fake)
        logs["d/real_logit"] = float(real.detach().float().mean())
        logs["d/fake_logit"] = float(fake.detach().float().mean())
        return StepOutput({"generator": loss_g, "discriminator": loss_d}, logs)

    @torch.no_grad()
    def validate(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``lq`` (the LR canvas), ``sr`` (decoded by the fine-tuned decoder) and ``gt``, ``(B, 3, H, W)`` in ``[0, 1]``.

        Noise comes from a fixed-seed generator, so images of different steps are comparable and the
        training RNG (restored on resume) is not consumed.
        """
        lq, gt = self.lr_and_gt(batch)
        gen = torch.Generator(device=lq.device).manual_seed(0)
        z = self.clean_latent(lq, gen)
        sr = self.unwrap("decoder")(z / self.vae.config.scaling_factor).float()
        return {"lq": lq, "sr": (sr / 2 + 0.5).clamp(0, 1), "gt": (gt / 2 + 0.5).clamp(0, 1)}

    def export(self, output_dir: str | os.PathLike) -> Path:
        """Write the fine-tuned VAE as ``output_dir/vae/`` (diffusers layout, safetensors, float32), loadable
        with ``CCSRPipeline.from_pretrained(model, vae=output_dir)``. Written beside and renamed into place."""
        from ccsr.atomic import replace_dir_atomically

        final = Path(output_dir) / "vae"
        if final.resolve() == self.vae_source.resolve():
            raise ValueError(
                f"export to {final} would overwrite the VAE this run started from; choose another train.output_dir"
            )
        return replace_dir_atomically(
            final, lambda tmp: self.vae.save_pretrained(tmp, safe_serialization=True)
        )


def run(cfg: Stage2Config) -> TrainResult:
    """Train stage 2 as configured; the VAE is exported to ``train.output_dir/vae``."""
    return train_sr_stage(lambda: Stage2Step(cfg), cfg, "ccsr-stage2")
