"""Configs of the from-scratch stages (``ccsr train autoencoder`` / ``ccsr train base``) and of the
ccsr-tiny recipe (``ccsr train tiny-recipe``), as strict dataclasses for :func:`ccsr.config.load_config`.

The architecture is not repeated here: ``model.arch`` names a yaml of :class:`ccsr.models.tiny.TinySpec`
fields (``configs/tiny/arch.yaml``), the one place the sizes of every component live. Pure: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ccsr.config import LoopConfig, OptimizerConfig, check


@dataclass(frozen=True)
class ImageDataConfig:
    """High-quality training images: random ``resolution`` crops and flips, nothing degraded."""

    train: tuple[str, ...]  # image folders and/or list files (one path per line; repeats allowed)
    resolution: int = 256  # crop side in pixels; a multiple of the VAE's downsampling factor
    num_workers: int = 2
    cache_mb: int = 0  # decoded training images kept in memory per worker (small data sets); 0: none
    # Share of crops recoloured (channel permutation, hue rotation, saturation) / replaced by a synthetic
    # flat or ramp crop (ccsr.data.augment): an autoencoder trained on a few photographs otherwise
    # reproduces only their colours and blotches smooth areas.
    recolor_prob: float = 0.0
    smooth_prob: float = 0.0

    def __post_init__(self) -> None:
        check(len(self.train) > 0, "train: give at least one image folder or list file")
        check(
            self.resolution >= 8 and self.resolution % 8 == 0,
            f"resolution={self.resolution} must be a positive multiple of 8",
        )
        check(self.num_workers >= 0, f"num_workers={self.num_workers} must be >= 0")
        check(self.cache_mb >= 0, f"cache_mb={self.cache_mb} must be >= 0 (0: no cache)")
        for name in ("recolor_prob", "smooth_prob"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"{name}={value} must be a probability in [0, 1]")


@dataclass(frozen=True)
class ScratchModelConfig:
    """What to build: ``arch`` (a TinySpec yaml) with seed ``init_seed``, or continue from ``init``."""

    arch: str  # yaml of ccsr.models.tiny.TinySpec fields, e.g. configs/tiny/arch.yaml
    init_seed: int = 0  # seed of the random initialisation (same weights on every process and restart)
    init: str | None = None  # autoencoder: a vae/ folder; base: a base-model folder with unet/. null: random
    vae: str | None = None  # base only: the trained autoencoder's vae/ folder (required there)


@dataclass(frozen=True)
class AutoencoderObjective:
    """``L = rec(x_hat, x) + kl_weight * KL(q(z|x) || N(0, I))``, both means over elements.

    No perceptual term: LPIPS needs ImageNet weights that an offline machine lacks, and PSNR is what
    ccsr-tiny is measured on. The KL weight only keeps the latent bounded (SD uses a tiny one too);
    the latent's scale is then fixed by ``vae.config.scaling_factor = 1 / std(z)``, measured at export.
    """

    reconstruction: Literal["l1", "l2"] = "l1"
    kl_weight: float = 1e-6
    calibration_crops: int = 32  # training crops (fixed, seeded) over which std(z) is measured at export
    # Bias of the encoder's log-variance outputs at a random init. diffusers' init gives log-variance
    # ~0, so the sampled latent starts as unit noise over a near-zero mean and the decoder first
    # learns to ignore it; -10 (std 0.007) lets it learn from the image at once. null: leave the init.
    init_logvar: float | None = None

    def __post_init__(self) -> None:
        check(
            self.init_logvar is None or -30 <= self.init_logvar <= 20,
            f"init_logvar={self.init_logvar} must be in [-30, 20] (diffusers clamps there)",
        )
        check(self.kl_weight >= 0, f"kl_weight={self.kl_weight} must be >= 0")
        check(self.calibration_crops >= 1, f"calibration_crops={self.calibration_crops} must be >= 1")


@dataclass(frozen=True)
class BaseObjective:
    """MSE to the scheduler's target (epsilon, or v for ccsr-tiny) on ``t ~ U{0, ..., 999}`` of the SD-2.1
    DDPM schedule, text = one of ``prompts``.

    The reference's prior (SD-2.1) is text-conditioned; CCSR trains and runs it with fixed prompts.
    Drawing the prompt per sample from the few CCSR uses (empty caption, the inference prompt and the
    negative prompt) teaches the UNet that they all mean "a photograph", so inference prompts are
    never out of distribution.
    """

    prompts: tuple[str, ...] = ("",)
    validation_steps: int = 25  # DDPM steps of the unconditional samples drawn at validation

    def __post_init__(self) -> None:
        check(len(self.prompts) >= 1, "prompts: give at least one (the empty caption is '')")
        check(self.validation_steps >= 1, f"validation_steps={self.validation_steps} must be >= 1")


@dataclass(frozen=True)
class _ScratchStageConfig:
    """What the two from-scratch stages share; each adds its ``objective``."""

    model: ScratchModelConfig
    data: ImageDataConfig
    train: LoopConfig
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(learning_rate=2e-4))


@dataclass(frozen=True)
class AutoencoderConfig(_ScratchStageConfig):
    """``configs/tiny/autoencoder.yaml``: train an AutoencoderKL from scratch on images."""

    objective: AutoencoderObjective = field(default_factory=AutoencoderObjective)


@dataclass(frozen=True)
class BaseConfig(_ScratchStageConfig):
    """``configs/tiny/base.yaml``: train the latent-diffusion UNet (the prior SD-2.1 is for CCSR)."""

    objective: BaseObjective = field(default_factory=BaseObjective)

    def __post_init__(self) -> None:
        check(
            self.model.vae is not None,
            "model.vae: the base UNet trains on a trained autoencoder's latents; give its vae/ folder",
        )


# ---------------------------------------------------------------------------------------------- recipe
RECIPE_STAGES = ("autoencoder", "base", "stage1", "stage2")


@dataclass(frozen=True)
class StageFiles:
    """The config file of every stage; the recipe fills in data and model paths between them."""

    autoencoder: str = "configs/tiny/autoencoder.yaml"
    base: str = "configs/tiny/base.yaml"
    stage1: str = "configs/tiny/stage1.yaml"
    stage2: str = "configs/tiny/stage2.yaml"


@dataclass(frozen=True)
class StageOverrides:
    """Extra ``key=value`` overrides per stage; ``all`` goes to every stage first (e.g. a smoke run:
    ``--set "overrides.all=[train.max_train_steps=2]"``)."""

    all: tuple[str, ...] = ()
    autoencoder: tuple[str, ...] = ()
    base: tuple[str, ...] = ()
    stage1: tuple[str, ...] = ()
    stage2: tuple[str, ...] = ()


RELEASE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class RecipeConfig:
    """``configs/tiny/recipe.yaml``: data -> autoencoder -> base UNet -> stage 1 -> stage 2 -> export."""

    output_dir: str = "runs/ccsr-tiny"  # one sub-folder per stage, data/ and the release
    release_dir: str | None = None  # where the single-folder model goes; null: output_dir/ccsr-tiny
    release_dtype: str = "float32"  # float32 or float16 storage of the release (loaders upcast to float32)
    stages: StageFiles = field(default_factory=StageFiles)
    overrides: StageOverrides = field(default_factory=StageOverrides)
    train_min_side: int = 128  # training copies smaller than this are not written (= the crop side)
    redo: bool = False  # false: a stage whose export exists is skipped, so a stopped recipe continues
    #: the colour fix the release recommends (its inference_defaults.json; `ccsr upscale`'s default)
    color_fix: str = "adain"
    #: pixels mirrored around the canvas at inference (the release's inference_defaults.json); 0: none
    border_pad: int = 0
    #: bands of the decoded image the wavelet colour fix keeps (inference_defaults.json); 5: the reference's
    wavelet_levels: int = 5
    #: a folder written by `ccsr data tiny-set` (train/ and eval/); null: scikit-image's photographs
    data_dir: str | None = None

    def __post_init__(self) -> None:
        from ccsr.options import COLOR_FIXES, MAX_WAVELET_LEVELS, wavelet_levels_ok

        check(self.train_min_side >= 8, f"train_min_side={self.train_min_side} must be >= 8")
        check(
            self.border_pad >= 0 and self.border_pad % 8 == 0,
            f"border_pad={self.border_pad} must be a multiple of 8 >= 0",
        )
        check(
            wavelet_levels_ok(self.wavelet_levels),
            f"wavelet_levels={self.wavelet_levels} must be 1 to {MAX_WAVELET_LEVELS}",
        )
        check(self.color_fix in COLOR_FIXES, f"color_fix={self.color_fix!r} must be one of {COLOR_FIXES}")
        check(
            self.release_dtype in RELEASE_DTYPES,
            f"release_dtype={self.release_dtype!r} must be one of {RELEASE_DTYPES}",
        )
