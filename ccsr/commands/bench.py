"""``ccsr bench``: time CCSR on this machine, by stage, with FLOPs, memory and folder throughput.

Imports only the standard library until ``main`` runs.
"""

from __future__ import annotations

import argparse

HELP = "Measure upscaling speed on this machine: time per stage, images/s, peak memory, TFLOP/s."

EPILOG = """\
examples:
  ccsr bench --model tiny                                   # the shipped ccsr-tiny on this CPU
  ccsr bench --model tiny --size 128 512 --images 20 --compare-upscale --workers 0
  ccsr bench --model full-size --device cuda --precision bf16 --steps 1 2
  ccsr bench --model full-size --device cuda --precision bf16 --channels-last --compile \\
      --compile-mode reduce-overhead --json > bench.json

--model full-size builds the full-size CCSR-v2 architecture with random weights: it costs exactly what
the real weights cost. Times are wall-clock medians after --warmup calls; on CUDA every stage boundary
synchronises the device. Exit status: 0 measured, 2 bad arguments or the model could not be loaded.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (shipped), 'full-size' (random weights, for timing), or a model folder / Hub repo id",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (auto: cuda when available)")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto", help="auto: as ccsr upscale"
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[128, 512],
        metavar=("IN", "OUT"),
        help="square input and output side",
    )
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[1], help="denoiser evaluations (1 = S1, 2 = S2)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (1; more with --compile)")
    parser.add_argument("--images", type=int, default=8, help="folder-sized batch for images/s (8; 0 skips)")
    g = parser.add_argument_group("speed options (each can be measured on its own)")
    g.add_argument("--channels-last", action="store_true", help="NHWC weights (CCSRPipeline.optimize)")
    g.add_argument(
        "--compile", action="store_true", help="torch.compile the networks (CCSRPipeline.optimize)"
    )
    g.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune"),
        default="default",
        help="torch.compile mode; reduce-overhead replays CUDA graphs",
    )
    g.add_argument(
        "--sdpa",
        choices=("auto", "flash", "efficient", "cudnn", "math"),
        default="auto",
        help="attention kernel to prefer (others remain as fall-backs; auto: torch's choice)",
    )
    g.add_argument("--tiling", choices=("auto", "on", "off"), default="auto", help="as ccsr upscale --tiling")
    g.add_argument("--tile-size", type=int, default=512)
    g.add_argument("--tile-stride", type=int, default=256)
    g.add_argument("--tile-batch", type=int, default=1, help="tiles per network call")
    g = parser.add_argument_group("what to report")
    g.add_argument(
        "--no-flops", dest="flops", action="store_false", help="skip the FLOP count (one eager call)"
    )
    g.add_argument(
        "--compare-upscale",
        action="store_true",
        help="also run `ccsr upscale` on the same images (a subprocess) and compare its throughput",
    )
    g.add_argument("--workers", type=int, help="--workers for --compare-upscale (default: ccsr upscale's)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", action="store_true", help="print the result as JSON instead of text")


def main(args: argparse.Namespace) -> int:
    import json
    import sys

    import torch

    from ccsr.bench.measure import run_bench
    from ccsr.bench.report import render
    from ccsr.bench.setup import BenchSettings

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        settings = BenchSettings(
            model=args.model,
            device=device,
            precision=args.precision,
            size=tuple(args.size),
            steps=tuple(args.steps),
            compile=args.compile,
            compile_mode=None if args.compile_mode == "default" else args.compile_mode,
            channels_last=args.channels_last,
            sdpa=args.sdpa,
            repeats=args.repeats,
            warmup=args.warmup,
            images=args.images,
            tiling=args.tiling,
            tile_size=args.tile_size,
            tile_stride=args.tile_stride,
            tile_batch=args.tile_batch,
            flops=args.flops,
            compare_upscale=args.compare_upscale,
            workers=args.workers,
            seed=args.seed,
        )
        result = run_bench(settings)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"ccsr bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0
