"""``ccsr app``: a local web app to upscale, compare with bicubic and see where the model is unsure.

Imports only the standard library until ``main`` runs; Gradio comes with ``pip install "ccsr[app]"``.
"""

from __future__ import annotations

import argparse
import os

HELP = "Start a local web app (Gradio): upscale, before/after slider, uncertainty map, folders, reports."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ccsr.io import DEFAULT_MAX_PIXELS

    parser.add_argument(
        "--model",
        default=os.environ.get("CCSR_MODEL", "tiny"),
        help="CCSR-v2 weights: a folder, a Hub repo id, or 'tiny', the model shipped with ccsr (default: "
        "$CCSR_MODEL, else tiny)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger uploads (decompression-bomb guard)",
    )
    parser.add_argument(
        "--process-size", type=int, default=512, help="default process size shown in the page (512)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument(
        "--work-dir", help="where uploads and their results are kept (default: a new temporary folder)"
    )


def main(args: argparse.Namespace) -> int:
    import sys
    import tempfile
    from pathlib import Path

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('ccsr app: error: the app needs Gradio: pip install "ccsr[app]"', file=sys.stderr)
        return 2
    from ccsr.app.engine import Engine
    from ccsr.app.ui import build

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="ccsr-app-"))
    try:
        engine = Engine(args.model, work, device=args.device, max_pixels=args.max_pixels)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"ccsr app: error: could not load --model {args.model}: {e}", file=sys.stderr)
        return 2
    demo = build(engine, process_size=args.process_size)
    print(f"ccsr app: model {args.model}, work folder {work}", flush=True)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        allowed_paths=[str(work)],
        show_error=False,
        ssr_mode=False,
        inbrowser=False,
    )
    return 0
