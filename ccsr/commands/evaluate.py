"""``ccsr evaluate``: quality metrics (and stability, when the run has several samples) of a run folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ccsr.metrics.paper import PAPER_METRICS

HELP = "score a run folder (or a steps*/ sweep) with pyiqa metrics and write report.html/.md/.json and per_image.csv"

#: ``--metrics paper``: every metric of the CCSR-v2 table.
PAPER_SET = tuple(PAPER_METRICS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="output of `ccsr upscale` (RUN/<img>.png or RUN/sample00..sampleK-1/), the reference's sample00../sample0.. "
        "layout, or a sweep holding steps*/ runs",
    )
    parser.add_argument(
        "--gt",
        type=Path,
        default=None,
        metavar="GT",
        help="ground-truth folder; paired by file name (extension ignored)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="NAME",
        help="pyiqa metric names, or 'paper' for "
        + " ".join(PAPER_SET)
        + ". Default: psnr ssim with --gt, none without "
        "(L-STD only). Variants are pinned: psnr/ssim on Y of YCbCr, lpips alex v0.1, maniqa = maniqa-pipal, musiq = KonIQ",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail when a metric cannot run (missing weights or ground truth) instead of listing it as not computed",
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="where the report goes (default: RUN_DIR)"
    )
    parser.add_argument(
        "--device", default=None, help="device for the metric networks (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--crop",
        type=int,
        default=4,
        help="border cropped on every side before the metrics and L-STD (default 4, the paper's)",
    )
    parser.add_argument(
        "--pair-by",
        choices=("name", "order"),
        default="name",
        help="pair outputs and ground truth by file name or by sorted order (the reference's way)",
    )
    parser.add_argument(
        "--top", type=int, default=8, help="how many of the most unstable images get heat maps (default 8)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def resolve_metrics(names: list[str] | None, have_gt: bool) -> tuple[str, ...]:
    if names is None:
        return ("psnr", "ssim") if have_gt else ()
    out: list[str] = []
    for n in names:
        for m in PAPER_SET if n == "paper" else (n,):
            if m not in out:
                out.append(m)
    return tuple(out)


def run(args: argparse.Namespace, command: str, min_samples: int) -> int:
    from ccsr.metrics.iqa import MetricUnavailable
    from ccsr.metrics.readers import RunFolderError
    from ccsr.metrics.report import evaluate_folder
    from ccsr.metrics.report_render import table

    if args.top < 0 or args.crop < 0:
        print(f"ccsr {command}: error: --top and --crop must be >= 0", file=sys.stderr)
        return 2
    metrics = resolve_metrics(args.metrics, args.gt is not None)
    try:
        page = evaluate_folder(
            args.run_dir,
            args.gt,
            metrics,
            args.out,
            args.strict,
            device=args.device,
            crop=args.crop,
            pair_by=args.pair_by,
            top=args.top,
            min_samples=min_samples,
            progress=not args.quiet,
        )
    except (RunFolderError, MetricUnavailable, ValueError, ImportError) as e:
        print(f"ccsr {command}: error: {e}", file=sys.stderr)
        return 2
    summary = json.loads((page.parent / "report.json").read_text(encoding="utf-8"))
    header, rows = table(summary)
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(r))
    for n, why in summary["not_computed"].items():
        print(f"not computed: {n}: {why}", file=sys.stderr)
    for r in summary["runs"]:
        for why in r["not_computed"].values():
            print(f"not computed ({r['label']}): {why}", file=sys.stderr)
    print(f"report: {page}")
    return 0


def main(args: argparse.Namespace) -> int:
    return run(args, "evaluate", min_samples=1)
