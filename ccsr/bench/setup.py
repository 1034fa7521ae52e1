"""What ``ccsr bench`` measures with: settings, the model, test images, the machine's name, speed options."""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = ("auto", *DTYPES)
#: ``--sdpa``: which attention kernels torch may pick, best first (``auto``: torch's own choice)
SDPA_CHOICES = ("auto", "flash", "efficient", "cudnn", "math")
TILING_MODES = ("auto", "on", "off")
EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"


@dataclass(frozen=True)
class BenchSettings:
    model: str = "tiny"
    device: str = "cpu"
    precision: str = "auto"
    size: tuple[int, int] = (128, 512)  # input side, output side (square images)
    steps: tuple[int, ...] = (1,)
    compile: bool = False
    compile_mode: str | None = None
    channels_last: bool = False
    sdpa: str = "auto"
    repeats: int = 5
    warmup: int = 1
    images: int = 8  # folder-sized batch for images per second; 0 skips it
    tiling: str = "auto"
    tile_size: int = 512
    tile_stride: int = 256
    tile_batch: int = 1
    flops: bool = True
    compare_upscale: bool = False
    workers: int | None = None  # for --compare-upscale; None: ccsr upscale's default
    seed: int = 0

    def __post_init__(self) -> None:
        lr, hr = self.size
        if lr < 8 or hr < lr or hr % lr:
            raise ValueError(f"--size {lr} {hr}: the output side must be a multiple of the input side (>= 8)")
        if hr % 8:
            raise ValueError(f"--size {lr} {hr}: the output side must be a multiple of 8")
        if not self.steps or min(self.steps) < 1:
            raise ValueError(f"--steps {list(self.steps)}: each must be >= 1")
        if self.repeats < 1 or self.warmup < 0 or self.images < 0:
            raise ValueError("--repeats must be >= 1, --warmup and --images >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: choose one of {PRECISIONS}")
        if self.sdpa not in SDPA_CHOICES:
            raise ValueError(f"--sdpa {self.sdpa!r}: choose one of {SDPA_CHOICES}")
        if self.tiling not in TILING_MODES:
            raise ValueError(f"--tiling {self.tiling!r}: choose one of {TILING_MODES}")

    @property
    def scale(self) -> int:
        return self.size[1] // self.size[0]

    def resolved_precision(self) -> str:
        """``auto``: as ``ccsr upscale`` (fp16 on CUDA, fp32 elsewhere)."""
        from ccsr.upscale.config import UpscaleConfig

        cfg = UpscaleConfig(inputs=("-",), output="-", model=self.model, precision=self.precision)
        return cfg.resolved_precision(torch.device(self.device).type)

    def call_kwargs(self, steps: int) -> dict:
        """Keyword arguments of the pipeline call: the output side is the process size, so no enlarging."""
        from ccsr.upscale.config import UpscaleConfig

        hr = self.size[1]
        big = hr * hr > UpscaleConfig.tile_threshold
        tiled = self.tiling == "on" or (self.tiling == "auto" and big)
        kw: dict = dict(steps=steps, upscale=self.scale, process_size=hr)
        if tiled:
            kw.update(
                tile_size=self.tile_size,
                tile_stride=self.tile_stride,
                tile_batch=self.tile_batch,
                vae_tiling=True,
            )
        return kw


def load_pipeline(settings: BenchSettings, dtype: torch.dtype, workdir: Path):
    """``(pipeline on the device, folder ccsr upscale can load the same model from)``.

    ``tiny``: the shipped ccsr-tiny; ``full-size``: the full-size architecture with random weights
    (:mod:`ccsr.bench.full_size`; its folder is written only when ``--compare-upscale`` needs it);
    anything else: a model folder or Hub repo id, as ``ccsr upscale --model`` takes.
    """
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from ccsr.models.shipped import resolve_model_root
    from ccsr.pipeline import CCSRPipeline

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    folder: Path | str | None = None
    if settings.model == "full-size":
        from ccsr.bench.full_size import build_full_size_pipeline

        pipe = build_full_size_pipeline(workdir / "tokenizer", torch_dtype=dtype)
        if settings.compare_upscale:
            folder = workdir / "full-size"
            pipe.save_pretrained(folder)
    else:
        folder = resolve_model_root(settings.model)
        pipe = CCSRPipeline.from_pretrained(folder, torch_dtype=dtype)
    for m in (pipe.unet, pipe.controlnet, pipe.vae, pipe.text_encoder):
        m.eval().requires_grad_(False)
    return pipe.to(settings.device).optimize(channels_last=settings.channels_last), folder


def test_images(n: int, side: int) -> list[Image.Image]:
    """``n`` different ``side x side`` RGB photographs: crops of the shipped examples, resized bicubic."""
    sources = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.png"))]
    out = []
    for k in range(n):
        src = sources[k % len(sources)]
        w, h = src.size
        s = min(w, h) - (2 * (k // len(sources))) % (min(w, h) // 2)  # another crop per round
        left, top = (w - s) // 2, (h - s) // 2
        out.append(src.crop((left, top, left + s, top + s)).resize((side, side), Image.Resampling.BICUBIC))
    return out


def sdpa_context(choice: str) -> contextlib.AbstractContextManager:
    """Prefer one attention kernel (others stay allowed as fall-backs, so every shape still runs)."""
    if choice == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b = SDPBackend
    first = {"flash": b.FLASH_ATTENTION, "efficient": b.EFFICIENT_ATTENTION, "cudnn": b.CUDNN_ATTENTION}
    if choice == "math":
        return sdpa_kernel([b.MATH])
    rest = [
        k for k in (b.FLASH_ATTENTION, b.CUDNN_ATTENTION, b.EFFICIENT_ATTENTION, b.MATH) if k != first[choice]
    ]
    return sdpa_kernel([first[choice], *rest], set_priority=True)


def machine(device: torch.device) -> dict:
    """Name the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, object] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(AttributeError, OSError):
        info["load_average"] = round(os.getloadavg()[0], 2)
    return info


def workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="ccsr-bench-")
