"""ccsr-tiny's speed target: a 128x128 -> 512x512 (x4) upscale at 1 step in at most 3 s on a 2-core CPU.

    python benchmarks/tiny_speed.py                       # the shipped weights (ccsr/assets/ccsr-tiny)
    python benchmarks/tiny_speed.py --random              # random weights of configs/tiny/arch.yaml (sizing)
    python benchmarks/tiny_speed.py --steps 1 2 4 --repeats 5

The whole pipeline is timed, as a user runs it: prompt encoding (cached after the first call), VAE
encode of the bicubic canvas, ControlNet + UNet, VAE decode, colour fix and the final resize. Input:
a 128x128 crop of scikit-image's ``camera`` photograph (held out from training). The figure is the
median of ``--repeats`` calls after one warm-up; the minimum is printed too, since other processes on a
shared machine only ever make a call slower. The load average is printed with it for that reason.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def build_pipe(random: bool, arch: str, model: str | None):
    from ccsr.pipeline import CCSRPipeline

    if random:
        from ccsr.config import load_config
        from ccsr.models.tiny import TinySpec, build_tiny_components

        return CCSRPipeline(*build_tiny_components(load_config(TinySpec, arch)))
    if model is None:
        from ccsr.upscale_config import TINY_MODEL_DIR

        model = str(TINY_MODEL_DIR)
    return CCSRPipeline.from_pretrained(model)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--random", action="store_true", help="random weights of --arch instead of the shipped model"
    )
    parser.add_argument("--arch", default="configs/tiny/arch.yaml")
    parser.add_argument("--model", default=None, help="a model folder (default: the shipped ccsr-tiny)")
    parser.add_argument("--size", type=int, default=128, help="input side (output = 4x)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from PIL import Image
    from skimage import data

    lr = Image.fromarray(data.camera()[192 : 192 + args.size * 2 : 2, 192 : 192 + args.size * 2 : 2]).convert(
        "RGB"
    )
    pipe = build_pipe(args.random, args.arch, args.model)
    params = sum(
        p.numel() for m in (pipe.unet, pipe.controlnet, pipe.vae, pipe.text_encoder) for p in m.parameters()
    )
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {params / 1e6:.2f} M parameters"
    )
    for steps in args.steps:

        def call(steps: int = steps) -> None:
            pipe(lr, steps=steps, upscale=4, generator=torch.Generator().manual_seed(0))

        call()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        out = pipe(lr, steps=steps, upscale=4, generator=torch.Generator().manual_seed(0)).images[0]
        print(
            f"{args.size}x{args.size} -> {out.size[0]}x{out.size[1]}, {steps} step(s): median {statistics.median(times):.2f} s, "
            f"min {min(times):.2f} s over {args.repeats} (load average {load:.1f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
