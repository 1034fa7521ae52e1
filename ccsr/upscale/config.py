"""Settings of a ``ccsr upscale`` run as one frozen, validated dataclass (no heavy imports here).

Defaults reproduce the paper's one-step setting (CCSR-S1, docs/algorithm.md §1.1/§8.5): 1 denoiser evaluation,
x4, process size 512, the reference prompts (``None`` = the pipeline's defaults). The colour fix
defaults to the model's recommendation (``inference_defaults.json`` in its folder), else AdaIN.
"""

from __future__ import annotations

from dataclasses import dataclass

from ccsr.io import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS
from ccsr.options import COLOR_FIXES, MAX_WAVELET_LEVELS, POSTPROCESS_MODES, TILE_WINDOWS, wavelet_levels_ok
from ccsr.upscale.limits import DEFAULT_MAX_OUTPUT_PIXELS

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
TILING_MODES = ("auto", "on", "off")
FRAMES = ("all", "first")


@dataclass(frozen=True)
class UpscaleConfig:
    inputs: tuple[str, ...]
    output: str
    model: str
    base: str | None = None
    controlnet: str | None = None
    vae: str | None = None
    allow_pickle: bool = False
    # schedule: user-level step counts (a sweep when several) and the reference's expert knobs
    steps: tuple[int, ...] = (1,)
    num_inference_steps: int | None = None
    t_max: float | None = None
    t_min: float | None = None
    start_timestep: int = 999
    start_point: str = "lr"
    guidance_scale: float | None = None  # None: 1.0 for 1 step, 4.5 for more (the paper's settings)
    prompt: str | None = None
    negative_prompt: str | None = None
    # image
    scale: int = 4
    process_size: int = 512
    color_fix: str | None = None  # None: the model folder's recommendation, else "adain" (reference)
    wavelet_levels: int | None = None  # None: the model folder's recommendation, else 5 (reference)
    postprocess: str | None = None  # None: the model folder's recommendation, else "reference"
    tile_window: str | None = None  # None: the model folder's recommendation, else "reference"
    # randomness: sample k of every image uses seed + k
    seed: int = 0
    samples: int = 1
    # consistency over the K samples (ccsr.consistency): a std heat map, one output picked or averaged
    uncertainty_map: bool = False
    select: str | None = None  # None (write every sample), "consensus" or "mean"
    consensus_distance: str = "l1-y"
    # execution
    precision: str = "auto"
    device: str = "auto"
    tiling: str = "auto"
    tile_size: int = 512  # pixels of the canvas, as the reference's --tile_diffusion_size
    tile_stride: int = 256
    tile_batch: int = 1
    tile_threshold: int = 1024 * 1024  # canvas pixels above which "auto" tiles
    vae_tiling: str = "auto"
    # output
    output_format: str = "png"
    quality: int = 95
    recursive: bool = False
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS  # limits the output and the model's canvas
    frames: str = (
        "all"  # multi-page TIFF and animations: "all" frames, or the "first" only (ccsr.upscale.frames)
    )
    workers: int | None = None  # None: resolved_workers() picks for the device
    channels_last: bool = False  # speed only: not part of a run's settings (outputs equal up to rounding)
    compile: bool = False
    quiet: bool = False
    log_jsonl: str | None = None
    report: bool = False
    report_gt: str | None = None
    report_metrics: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(len(self.inputs) > 0, "give at least one INPUT (an image file or a folder)")
        need(
            len(self.steps) > 0 and all(int(s) >= 1 for s in self.steps),
            f"--steps {self.steps}: each must be >= 1",
        )
        need(len(set(self.steps)) == len(self.steps), f"--steps {list(self.steps)} repeats a value")
        need(
            self.num_inference_steps is None or len(self.steps) == 1,
            "--num-inference-steps fixes the schedule, so it cannot be combined with a sweep of several --steps",
        )
        need(
            self.num_inference_steps is None or self.num_inference_steps >= 1,
            "--num-inference-steps must be >= 1",
        )
        need(self.samples >= 1, f"--samples {self.samples} must be >= 1")
        from ccsr.consistency import DISTANCES, SELECTIONS

        need(
            self.samples >= 2 or not (self.uncertainty_map or self.select),
            "--uncertainty-map and --select compare the samples of an image: give --samples K with K >= 2",
        )
        need(
            self.select is None or self.select in SELECTIONS,
            f"--select {self.select!r}: choose one of {SELECTIONS}",
        )
        need(
            self.consensus_distance in DISTANCES,
            f"--consensus-distance {self.consensus_distance!r}: choose one of {DISTANCES}",
        )
        need(self.scale >= 1, f"--scale {self.scale} must be a positive integer")
        need(self.process_size >= 0, f"--process-size {self.process_size} must be >= 0")
        need(
            self.color_fix is None or self.color_fix in COLOR_FIXES,
            f"--color-fix {self.color_fix!r}: choose one of {COLOR_FIXES}",
        )
        need(
            self.wavelet_levels is None or wavelet_levels_ok(self.wavelet_levels),
            f"--wavelet-levels {self.wavelet_levels}: give 1 to {MAX_WAVELET_LEVELS}",
        )
        need(
            self.postprocess is None or self.postprocess in POSTPROCESS_MODES,
            f"--postprocess {self.postprocess!r}: choose one of {POSTPROCESS_MODES}",
        )
        need(
            self.tile_window is None or self.tile_window in TILE_WINDOWS,
            f"--tile-window {self.tile_window!r}: choose one of {TILE_WINDOWS}",
        )
        need(
            self.start_point in ("lr", "noise"), f"--start-point {self.start_point!r}: choose 'lr' or 'noise'"
        )
        need(self.precision in PRECISIONS, f"--precision {self.precision!r}: choose one of {PRECISIONS}")
        need(
            self.tiling in TILING_MODES and self.vae_tiling in TILING_MODES,
            f"tiling modes are {TILING_MODES}",
        )
        need(
            self.tile_size > 0
            and self.tile_size % 8 == 0
            and self.tile_stride % 8 == 0
            and 0 < self.tile_stride <= self.tile_size,
            f"--tile-size {self.tile_size} and --tile-stride {self.tile_stride} must be multiples of 8 "
            "with 0 < stride <= size",
        )
        need(self.tile_batch >= 1, f"--tile-batch {self.tile_batch} must be >= 1")
        need(
            self.output_format in OUTPUT_FORMATS,
            f"--format {self.output_format!r}: choose one of {sorted(OUTPUT_FORMATS)}",
        )
        need(1 <= self.quality <= 100, f"--quality {self.quality} must be within 1..100")
        need(self.max_pixels > 0, f"--max-pixels {self.max_pixels} must be positive")
        need(self.frames in FRAMES, f"--frames {self.frames!r}: choose one of {FRAMES}")
        need(self.max_output_pixels > 0, f"--max-output-pixels {self.max_output_pixels} must be positive")
        need(
            self.workers is None or self.workers >= 0,
            f"--workers {self.workers} must be >= 0 (0: no background threads)",
        )
        need(
            self.guidance_scale is None or self.guidance_scale >= 0,
            f"--guidance {self.guidance_scale} must be >= 0",
        )
        need(
            self.report or (self.report_gt is None and self.report_metrics is None),
            "--gt and --metrics need --report",
        )

    def resolved_precision(self, device_type: str) -> str:
        """``auto``: fp16 on CUDA (how the reference produced its results), fp32 elsewhere."""
        if self.precision != "auto":
            return self.precision
        return "fp16" if device_type == "cuda" else "fp32"

    def resolved_workers(self, device_type: str) -> int:
        """Reader and writer threads each. Default: 2 on an accelerator, where decoding and PNG encoding on
        the CPU overlap with the GPU's work; 0 on a CPU, whose cores the networks already use (measured on
        a 2-core CPU: background threads made a folder run slower, README "Performance")."""
        if self.workers is not None:
            return self.workers
        return 0 if device_type == "cpu" else 2
