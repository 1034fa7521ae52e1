"""The resolved settings of one run folder, decided once by the plan (:mod:`ccsr.upscale.plan`).

:class:`RunSettings` is what a run folder's outputs are made with: its :meth:`~RunSettings.as_dict` is
hashed into the ``settings`` of every manifest line and recorded in ``run.json``, and
:meth:`~RunSettings.pipeline_kwargs` passes the same values to :class:`ccsr.pipeline.CCSRPipeline`,
so nothing is decided twice. ``None`` in :class:`~ccsr.upscale.config.UpscaleConfig` (the step preset's
value, the model folder's recommendation, the reference's prompts) is resolved here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

from ccsr.options import WAVELET_LEVELS
from ccsr.schedule import leading_timesteps, make_schedule, preset_for_steps
from ccsr.upscale import derived
from ccsr.upscale.config import UpscaleConfig
from ccsr.upscale.discovery import InputError
from ccsr.upscale.manifest import settings_hash

#: Settings passed to the pipeline under their own name (``scale`` goes as ``upscale``, ``postprocess``
#: by bit depth, tiling by canvas size: :meth:`RunSettings.pipeline_kwargs`, :class:`TileSettings`).
PIPELINE_KEYS = (
    "steps",
    "num_inference_steps",
    "t_max",
    "t_min",
    "guidance_scale",
    "start_timestep",
    "start_point",
    "prompt",
    "negative_prompt",
    "process_size",
    "color_fix",
    "tile_window",
    "border_pad",
    "wavelet_levels",
)


@dataclass(frozen=True)
class TileSettings:
    """Latent and VAE tiling of a run (``--tiling``, ``--vae-tiling``: auto, on, off; auto tiles a canvas of
    more than ``threshold`` pixels), and the latent tiles' window in pixels of the canvas."""

    latent: str
    vae: str
    tile_size: int
    tile_stride: int
    tile_batch: int
    threshold: int

    @classmethod
    def of(cls, cfg: UpscaleConfig) -> TileSettings:
        return cls(
            cfg.tiling, cfg.vae_tiling, cfg.tile_size, cfg.tile_stride, cfg.tile_batch, cfg.tile_threshold
        )

    def for_canvas(self, canvas_size: tuple[int, int]) -> tuple[bool, bool]:
        """(latent tiling, VAE tiling) for a canvas of ``(width, height)`` pixels."""
        big = canvas_size[0] * canvas_size[1] > self.threshold
        return (
            self.latent == "on" or (self.latent == "auto" and big),
            self.vae == "on" or (self.vae == "auto" and big),
        )


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run folder's outputs. The field order is the key order of ``run.json``'s
    ``"settings"``; the hash sorts the keys, so existing run folders keep their hash."""

    model: dict[str, str]  # component -> sha256 of its files (ccsr.upscale.manifest.model_identity)
    steps: int
    num_inference_steps: int
    t_max: float
    t_min: float
    guidance_scale: float
    start_timestep: int
    start_point: str
    prompt: str
    negative_prompt: str
    scale: int
    process_size: int
    color_fix: str
    postprocess: str
    tile_window: str
    border_pad: int
    wavelet_levels: int
    precision: str
    tiling: TileSettings
    format: str
    quality: int | None
    frames: str
    select: dict | None = None  # recorded only with --select, so that other runs keep their hash

    def as_dict(self) -> dict:
        """The JSON object that is hashed and recorded (a copy: changing it changes nothing here)."""
        out = asdict(self)
        if self.select is None:
            del out["select"]
        if self.wavelet_levels == WAVELET_LEVELS:  # the reference's: run folders of earlier versions resume
            del out["wavelet_levels"]
        return out

    @cached_property
    def hash(self) -> str:
        """The settings hash that every manifest line of this run folder carries."""
        return settings_hash(self.as_dict())

    def postprocess_for(self, bit_depth: int) -> str:
        """The authors' post-processing is 8-bit by definition; 16-bit inputs keep 16 bits through the float
        path."""
        return self.postprocess if bit_depth == 8 else "float"

    def pipeline_kwargs(self, bit_depth: int) -> dict:
        """The keyword arguments of :class:`ccsr.pipeline.CCSRPipeline` these settings decide, for an input
        of ``bit_depth`` bits."""
        return {
            **{k: getattr(self, k) for k in PIPELINE_KEYS},
            "upscale": self.scale,
            "postprocess": self.postprocess_for(bit_depth),
            "tile_batch": self.tiling.tile_batch,
        }


def resolve_settings(
    cfg: UpscaleConfig, steps: int, model: dict[str, str], precision: str, recommended: dict
) -> RunSettings:
    """The settings of the run folder of ``steps`` (``recommended``: the model folder's
    ``inference_defaults.json``). Raises :class:`InputError` on a schedule the reference would crash on,
    before any work."""
    from ccsr.pipeline import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT

    preset = preset_for_steps(steps)
    n = cfg.num_inference_steps or preset.num_inference_steps
    t_max = preset.t_max if cfg.t_max is None else cfg.t_max
    t_min = preset.t_min if cfg.t_min is None else cfg.t_min
    try:
        make_schedule(leading_timesteps(n), t_max, t_min, cfg.start_timestep)
    except ValueError as e:
        raise InputError(f"steps {steps}: {e}") from None
    return RunSettings(
        model=model,
        steps=steps,
        num_inference_steps=n,
        t_max=t_max,
        t_min=t_min,
        guidance_scale=preset.guidance_scale if cfg.guidance_scale is None else cfg.guidance_scale,
        start_timestep=cfg.start_timestep,
        start_point=cfg.start_point,
        prompt=DEFAULT_PROMPT if cfg.prompt is None else cfg.prompt,
        negative_prompt=DEFAULT_NEGATIVE_PROMPT if cfg.negative_prompt is None else cfg.negative_prompt,
        scale=cfg.scale,
        process_size=cfg.process_size,
        color_fix=cfg.color_fix or recommended["color_fix"],
        postprocess=cfg.postprocess or recommended["postprocess"],
        tile_window=cfg.tile_window or recommended["tile_window"],
        border_pad=recommended["border_pad"],
        wavelet_levels=cfg.wavelet_levels or recommended["wavelet_levels"],
        precision=precision,
        tiling=TileSettings.of(cfg),
        format=cfg.output_format,
        quality=cfg.quality if cfg.output_format in ("jpg", "webp") else None,
        frames=cfg.frames,
        select=derived.select_settings(cfg),
    )
