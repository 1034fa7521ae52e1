"""The measurements of ``ccsr bench``, returned as one JSON-ready dict (see :func:`run_bench`)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ccsr.bench.folder import bare_loop, same_pixels, upscale_run, write_inputs
from ccsr.bench.setup import DTYPES, BenchSettings, load_pipeline, machine, sdpa_context, test_images, workdir
from ccsr.bench.stages import NETWORK_STAGES, STAGES, StageTimer


def stats(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 6),
        "min": round(min(values), 6),
        "max": round(max(values), 6),
    }


def png_bytes(image: Image.Image) -> bytes:
    """The PNG a folder run writes for this output (``ccsr upscale``'s encoder)."""
    from ccsr.encode import encode_image

    return encode_image(np.asarray(image), None, "png")[0]


@torch.no_grad()  # no autograd bookkeeping in the timings; the caller's grad mode is left as it was
def run_bench(settings: BenchSettings) -> dict:
    """Load the model, warm up, and time every ``--steps`` setting; see the README's performance section."""
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {settings.device}: torch sees no CUDA device here; use --device cpu")
    precision = settings.resolved_precision()
    with workdir() as tmp:
        t = time.perf_counter()
        pipe, folder = load_pipeline(settings, DTYPES[precision], Path(tmp))
        load_s = time.perf_counter() - t
        timer = StageTimer(pipe, device)
        image = test_images(1, settings.size[0])[0]
        flops = {s: count_flops(pipe, timer, image, settings, s) for s in settings.steps if settings.flops}
        if settings.compile:
            pipe.optimize(compile=True, compile_mode=settings.compile_mode)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        src = write_inputs(test_images(settings.images, settings.size[0]), Path(tmp) / "in")
        runs = []
        for steps in settings.steps:
            run = measure_steps(pipe, timer, image, settings, steps, flops.get(steps))
            if settings.images:
                run["folder"] = bare_loop(pipe, src, Path(tmp) / f"bare{steps}", settings, steps, png_bytes)
            if settings.compare_upscale and folder is not None:
                color_fix = pipe.default_color_fix
                up = upscale_run(settings, folder, precision, steps, src, Path(tmp) / f"up{steps}", color_fix)
                if "folder" in run and up.get("steady_images_per_s"):
                    up["ratio_to_bare_loop"] = round(
                        up["steady_images_per_s"] / run["folder"]["steady_images_per_s"], 3
                    )
                    # the comparison is fair only if both made the same images
                    up["same_outputs_as_bare_loop"] = same_pixels(
                        Path(tmp) / f"bare{steps}", Path(tmp) / f"up{steps}"
                    )
                run["upscale"] = up
            run["verdict"] = verdict(run)
            runs.append(run)
        peak = peak_memory(device)
        timer.detach()
    params = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "controlnet", "vae", "text_encoder")
    }
    return {
        "ccsr_bench": 1,
        "machine": machine(device),
        "settings": {**settings.__dict__, "precision": precision, "size": list(settings.size)},
        "model": {"name": settings.model, "parameters": params, "color_fix": pipe.default_color_fix},
        "load_s": round(load_s, 3),
        "peak_memory": peak,
        "runs": runs,
    }


def _call(pipe, image: Image.Image, settings: BenchSettings, steps: int):
    gen = torch.Generator().manual_seed(settings.seed)
    return pipe(image, generator=gen, **settings.call_kwargs(steps))


def count_flops(pipe, timer: StageTimer, image: Image.Image, settings: BenchSettings, steps: int) -> dict:
    """FLOPs of one eager call by network stage (``torch.utils.flop_counter``)."""
    timer.reset()
    with sdpa_context(settings.sdpa), timer.count_flops():
        _call(pipe, image, settings, steps)
    per_stage = {s: int(timer.flops.get(s, 0)) for s in NETWORK_STAGES}
    # The prompt's embedding is cached after a run's first call: not part of the per-image cost.
    per_image = sum(v for s, v in per_stage.items() if s != "prompt")
    return {"per_stage": per_stage, "networks_per_image": per_image}


def measure_steps(pipe, timer: StageTimer, image, settings: BenchSettings, steps: int, flops) -> dict:
    """Warm-up, then ``repeats`` plain calls (latency) and ``repeats`` calls timed by stage."""
    sync = timer.sync
    first_prompt, warmup_s = None, []
    with sdpa_context(settings.sdpa):
        for i in range(settings.warmup):
            timer.reset()
            if i == 0:
                pipe._prompt_cache.clear()  # so the first call shows what the prompt costs once per run
            t = time.perf_counter()
            with timer.patched():
                out = _call(pipe, image, settings, steps)
            warmup_s.append(time.perf_counter() - t)
            if i == 0:
                first_prompt = timer.seconds.get("prompt", 0.0)
        calls, per_image = [], []
        for _ in range(settings.repeats):
            sync()
            t0 = time.perf_counter()
            out = _call(pipe, image, settings, steps)
            sync()
            t1 = time.perf_counter()
            png_bytes(out.images[0])
            calls.append(t1 - t0)
            per_image.append(time.perf_counter() - t0)
        stage_s: dict[str, list[float]] = {s: [] for s in (*STAGES, "other")}
        totals = []
        for _ in range(settings.repeats):
            timer.reset()
            with timer.patched():
                sync()
                t0 = time.perf_counter()
                out = _call(pipe, image, settings, steps)
                timer.begin("png encode")
                png_bytes(out.images[0])
                timer.end("png encode")
                total = time.perf_counter() - t0
            for s in STAGES:
                stage_s[s].append(timer.seconds.get(s, 0.0))
            stage_s["other"].append(total - sum(timer.seconds.values()))
            totals.append(total)
            stage_calls = dict(timer.calls)
    run = {
        "steps": steps,
        "timesteps": list(out.timesteps),
        "network_evals": out.num_network_evals,
        "input": [settings.size[0]] * 2,
        "output": list(out.images[0].size),
        "tiled": "tile_size" in settings.call_kwargs(steps),
        "warmup_s": [round(w, 4) for w in warmup_s],
        "prompt_first_call_s": None if first_prompt is None else round(first_prompt, 6),
        "call_s": stats(calls),
        "per_image_s": stats(per_image),
        "staged_total_s": stats(totals),
        "stages": {s: {**stats(v), "calls": stage_calls.get(s, 0)} for s, v in stage_s.items()},
    }
    if flops is not None:
        net_s = sum(run["stages"][s]["median"] for s in NETWORK_STAGES if s != "prompt")
        run["flops"] = flops
        run["tflops_per_s"] = {
            "networks": round(flops["networks_per_image"] / net_s / 1e12, 4) if net_s else None,
            "per_image": round(flops["networks_per_image"] / run["per_image_s"]["median"] / 1e12, 4),
        }
    decode_calls = run["stages"]["decode"]["calls"]
    if decode_calls > 1 and "tile_size" not in settings.call_kwargs(steps):
        run["note"] = "the VAE decode ran twice per image: the fp16 decode overflowed and was redone in fp32"
    return run


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "kind": "CUDA allocator, peak allocated since warm-up",
            "gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
        }
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"kind": "process RSS, peak over the whole run", "gib": round(rss / 2**20, 3)}


def verdict(run: dict) -> str:
    """One line: where the time of an image goes."""
    stages = {k: v["median"] for k, v in run["stages"].items()}
    total = sum(stages.values()) or 1.0
    nets = sum(stages[s] for s in NETWORK_STAGES)
    top = sorted(((v, k) for k, v in stages.items() if v > 0), reverse=True)[:3]
    parts = ", ".join(f"{k} {v / total:.0%}" for v, k in top)
    host = total - nets - stages["other"]
    kind = (
        "network-bound"
        if nets / total >= 0.7
        else ("host-bound" if host >= stages["other"] else "overhead-bound")
    )
    line = (
        f"{kind}: {parts}; networks {nets / total:.0%}, host work (colour fix, resize, PNG) "
        f"{host / total:.0%}, other (Python, copies, sampler) {stages['other'] / total:.0%}"
    )
    tf = run.get("tflops_per_s", {}).get("networks")
    return line + (f"; networks at {tf:.3g} TFLOP/s" if tf else "")
