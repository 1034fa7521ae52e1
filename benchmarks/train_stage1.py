"""Stage-1 training speed (the real loop and step) and Real-ESRGAN degradation throughput.

    python benchmarks/train_stage1.py --model tiny --resolution 64 --batch-size 2 --steps 8      # this CPU
    python benchmarks/train_stage1.py --model full --resolution 512 --batch-size 1 --steps 3     # this CPU (slow)
    python benchmarks/train_stage1.py --model full --device cuda --mixed-precision fp16 \\
        --resolution 512 --batch-size 4 --steps 10 --gradient-checkpointing                      # a GPU
    python benchmarks/train_stage1.py --degradation-only --device cuda --resolution 512            # images/s

Step time: median of the loop's own ``time/step_s`` over the steps after ``--warmup`` (2), leaving
out the steps that write a checkpoint (every N/2, and the last). Models have random weights (tiny: ccsr.models.tiny,
full: the SD-2.1-base + CCSR ControlNet architecture), so speed and memory are real, losses are not.
Data: real photographs (scikit-image) resized to at least the crop size.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_photos(folder: Path, min_side: int) -> Path:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field"):
        im = Image.fromarray(getattr(data, name)())
        s = max(1.0, min_side / min(im.size))
        im.resize((round(im.width * s) + 1, round(im.height * s) + 1), Image.Resampling.BICUBIC).save(
            folder / f"{name}.png"
        )
    return folder


def degradation_throughput(device: str, resolution: int, batch: int, repeats: int) -> dict:
    from ccsr.data.datasets import HQImageDataset
    from ccsr.data.degradation import RealESRGANDegradation

    ds = HQImageDataset([write_photos(Path(tempfile.mkdtemp()), resolution)], resolution)
    gt = torch.stack([ds[i % len(ds)]["gt"] for i in range(batch)]).to(device)
    degrade = RealESRGANDegradation()
    degrade(gt)  # warm-up (DiffJPEG tables, kernels)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        degrade(gt)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {
        "degradation_images_per_s": batch / statistics.median(times),
        "batch": batch,
        "resolution": resolution,
    }


def build(model: str):
    if model == "tiny":
        from ccsr.models.tiny import build_tiny_components

        return build_tiny_components()
    from ccsr.bench.full_size import build_full_size_pipeline

    p = build_full_size_pipeline(tempfile.mkdtemp())
    return p.unet, p.controlnet, p.vae, p.text_encoder, p.tokenizer, p.scheduler


def make_step(model: str):
    from accelerate.utils import set_seed

    from ccsr.data.degradation import RealESRGANDegradation
    from ccsr.training.stage1 import Stage1Step
    from ccsr.training.stage1_config import Stage1Objective

    set_seed(0)
    unet, controlnet, vae, text, tok, sched = build(model)
    return Stage1Step(
        unet=unet,
        controlnet=controlnet,
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        scheduler=sched,
        objective=Stage1Objective(),
        degrade=RealESRGANDegradation(),
    )


def run_loop(args, out: Path, steps: int, resume: str | None = None, step=None):
    from ccsr.config import LoopConfig, OptimizerConfig
    from ccsr.data.datasets import HQImageDataset
    from ccsr.training.loop import train

    step = step or make_step(args.model)
    data = HQImageDataset([write_photos(out.parent / "photos", args.resolution)], args.resolution)
    loop = LoopConfig(
        output_dir=str(out),
        max_train_steps=steps,
        batch_size=args.batch_size,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        checkpointing_steps=max(1, args.steps // 2),
        resume_from_checkpoint=resume,
        log_with="none",
        cpu=args.device == "cpu",
    )
    optim = OptimizerConfig(use_8bit_adam=args.use_8bit_adam)
    return step, train(step, data, loop, optim, num_workers=args.num_workers)


def resume_check(args) -> dict:
    """N/2 steps, then resume to N, against N steps straight: losses and exported weights."""
    from safetensors.torch import load_file

    root = Path(tempfile.mkdtemp())
    _, full = run_loop(args, root / "full", args.steps)
    _, first = run_loop(args, root / "split", args.steps // 2)
    _, second = run_loop(args, root / "split", args.steps, resume="latest")
    a = load_file(str(root / "full" / "controlnet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(root / "split" / "controlnet" / "diffusion_pytorch_model.safetensors"))
    return {
        "losses_straight": [h["loss/controlnet"] for h in full.history],
        "losses_resumed": [h["loss/controlnet"] for h in first.history + second.history],
        "max_abs_weight_diff": max(float((a[k] - b[k]).abs().max()) for k in a),
    }


def train_speed(args) -> dict:
    root = Path(tempfile.mkdtemp())
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step, _ = run_loop(args, root / "out", args.steps)
    controlnet = step.unwrap("controlnet")
    lines = (root / "out" / "logs" / "metrics.jsonl").read_text().splitlines()
    times = [json.loads(line)["time/step_s"] for line in lines]
    every = max(1, args.steps // 2)  # checkpoint interval of run_loop
    timed = [t for i, t in enumerate(times, 1) if i > args.warmup and i % every and i != len(times)] or times
    out = {
        "model": args.model,
        "trainable_params_M": sum(p.numel() for p in controlnet.parameters()) / 1e6,
        "step_s_median": statistics.median(timed),
        "step_s_all": [round(t, 3) for t in times],
        "images_per_s": args.batch_size / statistics.median(timed),
    }
    if args.device.startswith("cuda"):
        out["peak_gpu_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the median")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--use-8bit-adam", action="store_true")
    ap.add_argument("--degradation-only", action="store_true", help="only measure the degradation")
    ap.add_argument("--degradation-batch", type=int, default=8)
    ap.add_argument("--resume-check", action="store_true", help="compare N/2 + resume to N against N steps")
    args = ap.parse_args()
    info = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    info["args"] = vars(args)
    result = degradation_throughput(args.device, args.resolution, args.degradation_batch, 3)
    if args.resume_check:
        result.update(resume_check(args))
    elif not args.degradation_only:
        result.update(train_speed(args))
    print(json.dumps({**info, **result}, indent=1))


if __name__ == "__main__":
    np.random.seed(0)
    main()
