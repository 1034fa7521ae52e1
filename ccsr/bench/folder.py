"""Folder throughput: a bare loop of pipeline calls + PNG saves, and the real ``ccsr upscale`` on the same files.

Both rates are also given in steady state, ``(n - 1) / (end of image n - end of image 1)``, so that the
first image's one-off costs (prompt encoding, allocator growth, a compile) count in neither. The
``ccsr upscale`` run is a subprocess of the installed command; its start (interpreter, imports, argument
checks) is the wall time seen from outside minus the ``wall_s`` its ``run.json`` records, and its model
loading is ``run.json``'s ``model_load_s``: both reported apart from the loop's throughput.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image


def write_inputs(images: list[Image.Image], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, im in enumerate(images):
        im.save(folder / f"{k:03d}.png")
    return folder


def _rates(ends: list[float], start: float) -> dict:
    n = len(ends)
    out = {
        "images": n,
        "seconds": round(ends[-1] - start, 4),
        "images_per_s": round(n / (ends[-1] - start), 4),
    }
    out["steady_images_per_s"] = round((n - 1) / (ends[-1] - ends[0]), 4) if n > 1 else out["images_per_s"]
    return out


def bare_loop(pipe, src: Path, dst: Path, settings, steps: int, png: Callable[[Image.Image], bytes]) -> dict:
    """Read, upscale and save every PNG of ``src`` one after another in this process."""
    from ccsr.bench.setup import sdpa_context

    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.png"))
    ends = []
    with sdpa_context(settings.sdpa):
        start = time.perf_counter()
        for f in files:
            with Image.open(f) as im:
                lr = im.convert("RGB")
            gen = torch.Generator().manual_seed(settings.seed)
            out = pipe(lr, generator=gen, **settings.call_kwargs(steps))
            (dst / f.name).write_bytes(png(out.images[0]))
            ends.append(time.perf_counter())
    return _rates(ends, start)


def upscale_command(
    settings, model: str | Path, precision: str, steps: int, src: Path, dst: Path, color_fix: str
):
    """The ``ccsr upscale`` command line doing what the bare loop does."""
    lr, hr = settings.size
    tiled = "tile_size" in settings.call_kwargs(steps)
    cmd = [sys.executable, "-m", "ccsr", "upscale", str(src), str(dst), "--model", str(model)]
    cmd += [
        "--scale",
        str(hr // lr),
        "--process-size",
        str(hr),
        "--steps",
        str(steps),
        "--seed",
        str(settings.seed),
    ]
    cmd += ["--device", settings.device, "--precision", precision, "--color-fix", color_fix, "--quiet"]
    cmd += ["--tiling", "on" if tiled else "off", "--vae-tiling", "on" if tiled else "off"]
    cmd += ["--tile-size", str(settings.tile_size), "--tile-stride", str(settings.tile_stride)]
    cmd += ["--tile-batch", str(settings.tile_batch), "--log-jsonl", str(dst.parent / f"{dst.name}.jsonl")]
    if settings.workers is not None:
        cmd += ["--workers", str(settings.workers)]
    cmd += ["--channels-last"] * settings.channels_last + ["--compile"] * settings.compile
    return cmd


def same_pixels(a: Path, b: Path) -> bool:
    """Whether every PNG of folder ``a`` has the same pixels as its namesake in ``b``."""
    import numpy as np

    files = sorted(a.glob("*.png"))
    return bool(files) and all(
        (b / f.name).is_file()
        and np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(b / f.name)))
        for f in files
    )


def upscale_run(settings, model, precision: str, steps: int, src: Path, dst: Path, color_fix: str) -> dict:
    """Run ``ccsr upscale`` on ``src`` as a subprocess; its loop's throughput, start-up and model load."""
    cmd = upscale_command(settings, model, precision, steps, src, dst, color_fix)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    shown = " ".join(["ccsr", *cmd[3:]])
    if proc.returncode != 0 or not (dst / "run.json").is_file():
        return {"command": shown, "rc": proc.returncode, "error": proc.stderr.strip()[-2000:]}
    timings = json.loads((dst / "run.json").read_text())["timings"]
    events = [json.loads(line) for line in (dst.parent / f"{dst.name}.jsonl").read_text().splitlines()]
    times = [e["time"] for e in events if e.get("event") == "image"]
    steady = (
        round((len(times) - 1) / (times[-1] - times[0]), 4)
        if len(times) > 1 and times[-1] > times[0]
        else None
    )
    return {
        "command": shown,
        "rc": proc.returncode,
        "images": len(times),
        "images_per_s": timings["images_per_s"],
        "steady_images_per_s": steady,
        "loop_s": timings["loop_s"],
        "model_load_s": timings["model_load_s"],
        "process_start_s": round(wall - timings["wall_s"], 3),
        "wall_s": round(wall, 3),
    }
