"""Folder throughput of `ccsr upscale`: background reading/writing versus one stage after another.

    python benchmarks/upscale_throughput.py --model tiny-random --images 20 --size 64 --workers 0 2
    python benchmarks/upscale_throughput.py --model full --device cuda --images 20 --size 128 256 --workers 0 2 4

Builds a folder of real photographs (scikit-image's samples, resized to ``--size`` squared), then runs
the real command (``ccsr.upscale.run.run_upscale``) once per worker setting into a fresh output folder,
after one warm-up run. ``--workers 0`` decodes, runs the model and encodes PNGs strictly one after
another in one thread; ``--workers N`` overlaps reading and writing with the model through N reader
and N writer threads. Prints images per second of the work loop (``run.json`` timings: first read to
last write, model loading excluded), seconds per image, and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_inputs(folder: Path, n: int, size: int) -> Path:
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        src = sources[k % len(sources)]
        h, w = src.shape[:2]
        side = min(h, w) - 8 * (k // len(sources))  # a different crop for each repeat of a source
        crop = src[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BICUBIC).save(
            folder / f"{k:03d}.png"
        )
    return folder


def make_model(kind: str, root: Path) -> str:
    if kind == "tiny-random":
        from ccsr.models.tiny import build_tiny_components, save_release_layout

        return str(save_release_layout(build_tiny_components(), root / "tiny"))
    if kind == "full":
        import torch

        from ccsr.bench.full_size import build_full_size_pipeline

        pipe = build_full_size_pipeline(root / "tokenizer", torch_dtype=torch.float16)
        pipe.save_pretrained(root / "full")
        return str(root / "full")
    return kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="tiny-random", help="tiny-random, full (random full-size weights) or a folder"
    )
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--size", type=int, nargs="+", default=[64], help="input side(s) in pixels")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--process-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    from ccsr.upscale.config import UpscaleConfig
    from ccsr.upscale.run import run_upscale

    tmp = Path(tempfile.mkdtemp(prefix="ccsr-bench-"))
    model = make_model(args.model, tmp)
    results = []
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}; model {args.model}")
    for size in args.size:
        src = make_inputs(tmp / f"in{size}", args.images, size)
        common = dict(
            model=model,
            scale=args.scale,
            process_size=args.process_size,
            steps=(args.steps,),
            device=args.device,
            precision=args.precision,
            quiet=True,
        )
        warm = make_inputs(tmp / f"warm{size}", 2, size)
        run_upscale(UpscaleConfig(inputs=(str(warm),), output=str(tmp / f"warm-out{size}"), **common))
        for workers in args.workers:
            out = tmp / f"out{size}-w{workers}"
            rc = run_upscale(UpscaleConfig(inputs=(str(src),), output=str(out), workers=workers, **common))
            rec = json.loads((out / "run.json").read_text())
            t = rec["timings"]
            row = {
                "size": size,
                "output": size * args.scale,
                "workers": workers,
                "images": rec["counts"]["outputs_written"],
                "images_per_s": t["images_per_s"],
                "s_per_image_loop": round(t["loop_s"] / max(1, rec["counts"]["outputs_written"]), 4),
                "model_s_per_image": t["mean_image_s"],
                "peak_gpu_gib": t["peak_gpu_memory_gib"],
                "device": rec["environment"]["device"],
                "dtype": rec["environment"]["dtype"],
                "rc": rc,
            }
            results.append(row)
            print(json.dumps(row))
    base = {r["size"]: r["images_per_s"] for r in results if r["workers"] == 0}
    for r in results:
        if r["workers"] and base.get(r["size"]):
            print(
                f"input {r['size']}px -> {r['output']}px, workers {r['workers']}: "
                f"{r['images_per_s']:.3f} img/s vs {base[r['size']]:.3f} sequential (x{r['images_per_s'] / base[r['size']]:.2f})"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
