"""``configs/train/stage2.yaml`` as typed, strict dataclasses (loaded with :func:`ccsr.config.load_config`).

Defaults are the reference's stage-2 recipe (docs/algorithm.md §4): decoder-only training from the LR start,
one extraction step, ``L = 1.0 L2 + 1.0 LPIPS + 0.05 hinge-G`` (the GAN term after 100 steps),
discriminator loss weight 0.5, lr 5e-6 for both networks. Like :mod:`ccsr.config`, this module
imports neither torch nor diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ccsr.config import DataConfig, LoopConfig, OptimizerConfig, check
from ccsr.schedule import DEFAULT_START_TIMESTEP, DEFAULT_T_MAX

#: The inference pipeline's negative prompt (ccsr.pipeline.DEFAULT_NEGATIVE_PROMPT), repeated here so
#: that reading a config does not import diffusers; a test keeps the two equal.
NEGATIVE_PROMPT = "blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed"

#: VAE submodules that may train. The encoder and quant_conv make the LR latent the frozen stage-1
#: model was trained on, and they run under no_grad, so they cannot be listed.
TRAINABLE_VAE_PARTS = ("decoder", "post_quant_conv")


@dataclass(frozen=True)
class Stage2ModelConfig:
    """The frozen stage-1 model and the VAE to fine-tune (layouts as :func:`ccsr.models.loading.resolve_paths`)."""

    pretrained: str  # SD-2.1-base folder, or a release root holding stable-diffusion-2-1-base/
    controlnet: str  # the stage-1 ControlNet: `ccsr train stage1`'s output (its controlnet/ folder or parent)
    base: str | None = None  # SD-2.1-base folder if not inside `pretrained`
    vae: str | None = (
        None  # VAE to start from; null: the vae/ found under `pretrained` (SD's, in the reference)
    )


@dataclass(frozen=True)
class SamplingConfig:
    """How the frozen stage-1 model turns the LR image into the latent that the decoder learns to decode.

    The same knobs as inference (:meth:`ccsr.pipeline.CCSRPipeline.__call__`) and computed the same way.
    The reference trains with N=1 (one step at t=999 from the LR latent), the empty prompt, no guidance.
    """

    num_inference_steps: int = 1  # N of the DDPM grid; 1 = CCSR-S1
    t_max: float = DEFAULT_T_MAX
    t_min: float = 0.0  # e.g. N=6, t_min=0.5 (with guidance 4.5) is CCSR-S2
    start_timestep: int = DEFAULT_START_TIMESTEP
    guidance_scale: float = 1.0  # > 1: classifier-free guidance in the loop, as inference
    prompt: str = ""  # the reference trains with the empty caption
    negative_prompt: str = NEGATIVE_PROMPT  # only read when guidance_scale > 1
    lr_latent: Literal["sample", "mode"] = "sample"  # VAE posterior sample (reference) or its mode

    def __post_init__(self) -> None:
        check(self.num_inference_steps >= 1, f"num_inference_steps={self.num_inference_steps} must be >= 1")
        check(
            0.0 <= self.t_min < self.t_max <= 1.0,
            f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}",
        )
        check(0 < self.start_timestep <= 999, f"start_timestep={self.start_timestep} must be in 1..999")
        check(self.guidance_scale >= 0, f"guidance_scale={self.guidance_scale} must be >= 0")


@dataclass(frozen=True)
class Stage2Objective:
    """``L_G = w_rec * rec + w_lpips * LPIPS + w_ssim * (1 - SSIM_Y) + w_gan * hinge_G`` (the GAN term only
    once the GAN is on); ``L_D = w_disc * hinge_D``. Reference: 1.0, 1.0, 0 (no SSIM term), 0.05, 0.5, begin 100."""

    trainable: tuple[str, ...] = (
        "decoder",
    )  # VAE parts that train; the reference leaves post_quant_conv frozen
    reconstruction: Literal["l1", "l2"] = "l2"  # the reference's MSE; the authors also mention L1 (issue #27)
    weight_reconstruction: float = 1.0
    weight_lpips: float = 1.0  # 0 turns LPIPS off (and does not load it)
    weight_ssim: float = 0.0  # 1 - SSIM on the luma channel; not in the reference (ccsr.training.ssim)
    weight_gan: float = 0.05  # generator's hinge term
    weight_discriminator: float = 0.5  # discriminator's hinge loss
    begin_disc: int = 100  # the generator's GAN term is off while global_step <= begin_disc (reference rule)

    def __post_init__(self) -> None:
        bad = [p for p in self.trainable if p not in TRAINABLE_VAE_PARTS]
        check(
            len(self.trainable) > 0 and not bad,
            f"trainable={list(self.trainable)}: choose from {list(TRAINABLE_VAE_PARTS)} (the encoder and "
            "quant_conv produce the LR latent the stage-1 model was trained on and stay frozen)",
        )
        weights = (
            self.weight_reconstruction,
            self.weight_lpips,
            self.weight_ssim,
            self.weight_gan,
            self.weight_discriminator,
        )
        check(all(w >= 0 for w in weights), f"loss weights {weights} must be >= 0")
        check(
            self.weight_discriminator > 0, "weight_discriminator must be > 0: the discriminator needs a loss"
        )
        check(
            self.weight_reconstruction + self.weight_lpips + self.weight_ssim + self.weight_gan > 0,
            "the generator needs a loss: weight_reconstruction, weight_lpips, weight_ssim and weight_gan are all 0",
        )
        check(self.begin_disc >= 0, f"begin_disc={self.begin_disc} must be >= 0")


@dataclass(frozen=True)
class LPIPSConfig:
    """LPIPS v0.1 (``lpips`` package); its trunk weights are read from a file, never downloaded."""

    net: Literal["vgg", "alex"] = "vgg"  # the reference's commented-out code used vgg
    backbone_weights: str | None = (
        None  # torchvision weights file; null: torchvision's cache ($TORCH_HOME/hub/checkpoints)
    )


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Projected discriminator (docs/algorithm.md §4.3); backbones are transformers folders or Hub ids."""

    feature_network: str = "facebook/dino-vits16"  # DINO ViT-S/16, frozen
    condition_network: str = "facebook/dinov2-small"  # DINOv2 ViT-S/14, frozen; CLS of the LR image
    taps: tuple[int, ...] | None = None  # hidden-state indices; null: embeddings + every quarter (0,3,6,9,12)
    cmap_dim: int = 64
    kernel_size: int = 9
    norm_groups: int = 4
    augment: bool = True  # DiffAugment translation + cutout on every discriminator input
    p_crop: float = 0.5  # random crop to the feature network's size when the image is larger

    def __post_init__(self) -> None:
        check(self.cmap_dim >= 1, f"cmap_dim={self.cmap_dim} must be >= 1")
        check(
            self.kernel_size >= 1 and self.kernel_size % 2 == 1, f"kernel_size={self.kernel_size} must be odd"
        )
        check(self.norm_groups >= 1, f"norm_groups={self.norm_groups} must be >= 1")
        check(0.0 <= self.p_crop <= 1.0, f"p_crop={self.p_crop} must be a probability")


def _stage2_optimizer() -> OptimizerConfig:
    return OptimizerConfig(learning_rate=5e-6)


@dataclass(frozen=True)
class Stage2Config:
    """``configs/train/stage2.yaml``: GAN fine-tuning of the VAE decoder."""

    model: Stage2ModelConfig
    data: DataConfig
    train: LoopConfig
    optimizer: OptimizerConfig = field(default_factory=_stage2_optimizer)  # one AdamW each for G and D
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    objective: Stage2Objective = field(default_factory=Stage2Objective)
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
