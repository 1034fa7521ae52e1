"""Time `ccsr stability` on a benchmark-sized run: N 512x512 images x K samples, PSNR + SSIM + L-STD.

    python benchmarks/stability_speed.py --images 20 --samples 10                     # this CPU
    python benchmarks/stability_speed.py --images 100 --samples 10 --device cuda      # a GPU

The run is made of real photographs (scikit-image's bundled images, 512x512 crops) as ground truth and
K noisy copies of each as the "samples", written as PNG in the run-folder layout; the time covers the
whole command as a user runs it (reading PNGs, metrics, L-STD, heat maps, report), after the imports.
For the paper's protocol (RealSR: 100 images, DIV2K-Val: 3000, 10 samples) multiply the per-image time.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _photos(n: int) -> list[np.ndarray]:
    from skimage import data

    bank = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    bank = [np.asarray(Image.fromarray(a).resize((512, 512), Image.Resampling.BICUBIC)) for a in bank]
    return [np.roll(bank[i % len(bank)], 37 * (i // len(bank)), axis=1) for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--metrics", nargs="+", default=["psnr", "ssim"])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import torch

    from ccsr.metrics.iqa import load_metric
    from ccsr.metrics.report import evaluate_folder

    for m in args.metrics:  # import pyiqa and build the metrics once, outside the timing
        load_metric(m, args.device)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        run, gt = Path(tmp) / "run", Path(tmp) / "gt"
        gt.mkdir()
        for i, a in enumerate(_photos(args.images)):
            Image.fromarray(a).save(gt / f"{i:04d}.png")
            for k in range(args.samples):
                d = run / f"sample{k:02d}"
                d.mkdir(parents=True, exist_ok=True)
                noisy = np.clip(a + rng.normal(0, 4, a.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(d / f"{i:04d}.png")
        t0 = time.perf_counter()
        evaluate_folder(run, gt, args.metrics, device=args.device, progress=False)
        dt = time.perf_counter() - t0
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    n = args.images * args.samples
    print(f"{device} ({torch.get_num_threads()} threads), metrics {' '.join(args.metrics)} + L-STD")
    print(
        f"{args.images} images x {args.samples} samples of 512x512: {dt:.1f} s = {dt / args.images:.2f} s per image"
    )
    print(f"({1000 * dt / n:.0f} ms per image-sample, report included)")


if __name__ == "__main__":
    main()
