"""``ccsr upscale INPUT... OUTPUT_DIR``: super-resolve image files and folders with CCSR-v2.

Also ``python -m ccsr upscale``, ``accelerate launch -m ccsr upscale`` (shards the images over the
processes) and ``inference/upscale.py``. Imports only the standard library until ``main`` runs.
"""

from __future__ import annotations

import argparse
import os

HELP = "Super-resolve image files or folders (resumable, sharded over processes with accelerate launch)."

EPILOG = """\
examples:
  ccsr upscale photos/ out/ --model /weights/ccsr-v2                 # x4, 1 step (the paper's CCSR-S1)
  ccsr upscale photos/ out/ --model /weights/ccsr-v2 --steps 2       # CCSR-S2: 2 evaluations, guidance 4.5
  ccsr upscale photos/ out/ --model M --samples 10 --seed 0          # out/sample00 .. sample09 (stability)
  ccsr upscale photos/ out/ --model M --samples 5 --uncertainty-map  # + out/<name>_std.png heat maps
  ccsr upscale photos/ out/ --model M --samples 5 --select consensus # one output: the medoid of 5 seeds
  ccsr upscale photos/ out/ --model M --steps 1 2 4                  # out/steps1, out/steps2, out/steps4
  accelerate launch -m ccsr upscale photos/ out/ --model M           # one share of the images per GPU

Re-running the same command resumes: finished outputs are skipped, and an existing output made with
other settings stops the run unless --overwrite is given. One run per OUTPUT_DIR at a time. Exit
status: 0 all done, 1 some inputs failed (listed in OUTPUT_DIR/failures.jsonl and failures.txt) or the
output folder stopped taking files mid-run, 2 nothing was run (bad arguments, unwritable or busy
OUTPUT_DIR), 130 interrupted.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="INPUT... OUTPUT_DIR",
        help="image files or folders, then the output folder",
    )
    _model_arguments(parser)
    _sampling_arguments(parser)
    _consistency_arguments(parser)
    _schedule_arguments(parser)
    _image_arguments(parser)
    _execution_arguments(parser)
    _output_arguments(parser)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        default=os.environ.get("CCSR_MODEL"),
        help="CCSR-v2 weights: a folder (official release or single-folder layout), a Hub repo id, or 'tiny' "
        "for the small model shipped with ccsr (default: $CCSR_MODEL)",
    )
    g.add_argument("--base-model", dest="base", help="SD-2.1-base folder, if not inside --model")
    g.add_argument("--controlnet", help="CCSR ControlNet folder, if not inside --model")
    g.add_argument("--vae", help="CCSR VAE folder, if not inside --model")
    g.add_argument(
        "--allow-pickle", action="store_true", help="load .bin (pickle) weights; only for files you trust"
    )


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[1],
        help="denoiser evaluations: 1 = CCSR-S1 (default), 2 = CCSR-S2, more = finer; several values run a sweep",
    )
    g.add_argument(
        "--guidance",
        type=float,
        dest="guidance_scale",
        help="classifier-free guidance (default 1.0 for 1 step, 4.5 otherwise)",
    )
    g.add_argument("--prompt", help="positive prompt (default: the reference's 'clean, high-resolution, 8k')")
    g.add_argument("--negative-prompt", help="negative prompt (default: the reference's)")
    g.add_argument("--seed", type=int, default=0, help="sample k of every image uses seed + k (default 0)")
    g.add_argument(
        "--samples", type=int, default=1, help="outputs per image; K > 1 writes sample00 .. sample{K-1}"
    )


def _consistency_arguments(parser: argparse.ArgumentParser) -> None:
    from ccsr.consistency import DISTANCES, SELECTIONS

    g = parser.add_argument_group("consistency over the samples (need --samples K, K >= 2)")
    g.add_argument(
        "--uncertainty-map",
        action="store_true",
        help="also write <name>_std.png beside the outputs: the per-pixel std over the K samples as a heat map",
    )
    g.add_argument(
        "--select",
        choices=SELECTIONS,
        help="write one output per image: the sample closest to the others (consensus) or the pixel mean",
    )
    g.add_argument(
        "--consensus-distance",
        choices=DISTANCES,
        default="l1-y",
        help="distance of --select consensus: L1 on the luma (default) or LPIPS (needs its weights)",
    )


def _schedule_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("expert schedule knobs (the reference's; override --steps' preset)")
    g.add_argument("--num-inference-steps", type=int, help="length N of the DDPM timestep grid")
    g.add_argument("--t-max", type=float, help="fraction of the grid kept after the first step (0.6667)")
    g.add_argument(
        "--t-min", type=float, help="fraction cut from the end; > 0 reads out x0 there (0.5 for 2+ steps)"
    )
    g.add_argument("--start-timestep", type=int, default=999, help="timestep of the first evaluation (999)")
    g.add_argument(
        "--start-point",
        choices=("lr", "noise"),
        default="lr",
        help="start from the noised LR latent or pure noise",
    )


def _image_arguments(parser: argparse.ArgumentParser) -> None:
    from ccsr.io import DEFAULT_MAX_PIXELS
    from ccsr.options import COLOR_FIXES, POSTPROCESS_MODES, TILE_WINDOWS
    from ccsr.upscale.config import FRAMES
    from ccsr.upscale.limits import DEFAULT_MAX_OUTPUT_PIXELS

    g = parser.add_argument_group("image")
    g.add_argument("--scale", type=int, default=4, help="integer upscaling factor (default 4)")
    g.add_argument(
        "--process-size", type=int, default=512, help="minimum short side the model works at (default 512)"
    )
    g.add_argument(
        "--color-fix",
        choices=COLOR_FIXES,
        default=None,
        help="colour correction against the input (default: what the model recommends in its "
        "inference_defaults.json, wavelet for --model tiny; adain, the reference's, otherwise)",
    )
    g.add_argument(
        "--wavelet-levels",
        type=int,
        default=None,
        metavar="N",
        help="bands of the model's output the wavelet colour fix keeps, 1-10; coarser ones come from the "
        "input (default: the model's inference_defaults.json, 3 for --model tiny; 5, the reference's, otherwise)",
    )
    g.add_argument(
        "--postprocess",
        choices=POSTPROCESS_MODES,
        default=None,
        help="reference: the authors' 8-bit order (round, colour fix, truncate, resize), their exact files; "
        "float: colour fix and resize in float, one rounding (more precise). Default: the model's "
        "inference_defaults.json, else reference",
    )
    g.add_argument(
        "--tile-window",
        choices=TILE_WINDOWS,
        default=None,
        help="Gaussian weight of latent tiles: reference (the authors' off-centre window) or symmetric. "
        "Default: the model's inference_defaults.json, else reference",
    )
    g.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger inputs (decompression-bomb guard)",
    )
    g.add_argument(
        "--max-output-pixels",
        type=int,
        default=DEFAULT_MAX_OUTPUT_PIXELS,
        help="refuse an input whose output, or the canvas the model works on, is larger (default 64 MP)",
    )
    g.add_argument(
        "--frames",
        choices=FRAMES,
        default="all",
        help="multi-page TIFF and animated GIF/WebP/PNG: upscale every frame (all), or the first only",
    )


def _execution_arguments(parser: argparse.ArgumentParser) -> None:
    from ccsr.upscale.config import PRECISIONS, TILING_MODES

    g = parser.add_argument_group("execution")
    g.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (auto: the process's accelerator)"
    )
    g.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="auto = fp16 on CUDA, fp32 elsewhere"
    )
    g.add_argument(
        "--tiling", choices=TILING_MODES, default="auto", help="latent tiling (auto: above --tile-threshold)"
    )
    g.add_argument(
        "--vae-tiling", choices=TILING_MODES, default="auto", help="tiled VAE encode/decode (auto: same rule)"
    )
    g.add_argument("--tile-size", type=int, default=512, help="tile size in canvas pixels (512)")
    g.add_argument("--tile-stride", type=int, default=256, help="tile stride in canvas pixels (256)")
    g.add_argument("--tile-batch", type=int, default=1, help="tiles per network call")
    g.add_argument(
        "--tile-threshold", type=int, default=1024 * 1024, help="canvas pixels above which auto tiling starts"
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="reader and writer threads each (0: all in the main thread; default 2 on a GPU, 0 on a CPU)",
    )
    g.add_argument(
        "--channels-last", action="store_true", help="NHWC weights for the networks (faster fp16 on CUDA)"
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the networks (slow first image per size, faster after; needs a C++ compiler on CPU)",
    )


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    from ccsr.io import OUTPUT_FORMATS

    g = parser.add_argument_group("output")
    g.add_argument(
        "--format",
        dest="output_format",
        choices=sorted(OUTPUT_FORMATS),
        default="png",
        help="output file format (png)",
    )
    g.add_argument("--quality", type=int, default=95, help="jpg/webp quality (95)")
    g.add_argument(
        "--recursive", "-r", action="store_true", help="scan sub-folders too, mirrored in OUTPUT_DIR"
    )
    mode = g.add_mutually_exclusive_group()
    mode.add_argument(
        "--skip-existing",
        dest="overwrite",
        action="store_false",
        default=False,
        help="resume: keep outputs made with the same settings (default)",
    )
    mode.add_argument(
        "--overwrite", dest="overwrite", action="store_true", help="redo and replace every output"
    )
    g.add_argument("--quiet", "-q", action="store_true", help="print only failures")
    g.add_argument(
        "--log-jsonl", metavar="PATH", help="append one JSON event per line (start, image, failed, summary)"
    )
    g.add_argument("--report", action="store_true", help="write an HTML report of the run when it finishes")
    g.add_argument(
        "--gt",
        dest="report_gt",
        metavar="DIR",
        help="ground-truth folder for --report's full-reference metrics",
    )
    g.add_argument("--metrics", dest="report_metrics", nargs="+", metavar="NAME", help="metrics for --report")


def config_from_args(args: argparse.Namespace):
    """argparse namespace -> :class:`ccsr.upscale.config.UpscaleConfig` (raises ValueError on bad values)."""
    from ccsr.upscale.config import UpscaleConfig

    if len(args.paths) < 2:
        raise ValueError("give INPUT... OUTPUT_DIR: at least one input and the output folder")
    if not args.model:
        raise ValueError("no model: pass --model FOLDER|HUB_ID|tiny, or set CCSR_MODEL")
    names = (
        "model base controlnet vae allow_pickle num_inference_steps t_max t_min start_timestep start_point "
        "guidance_scale prompt negative_prompt scale process_size color_fix wavelet_levels postprocess tile_window seed samples precision device tiling "
        "tile_size tile_stride tile_batch tile_threshold vae_tiling output_format quality recursive overwrite "
        "max_pixels max_output_pixels frames workers channels_last compile quiet log_jsonl report report_gt"
    ).split()
    return UpscaleConfig(
        inputs=tuple(args.paths[:-1]),
        output=args.paths[-1],
        steps=tuple(args.steps),
        uncertainty_map=args.uncertainty_map,
        select=args.select,
        consensus_distance=args.consensus_distance,
        report_metrics=None if args.report_metrics is None else tuple(args.report_metrics),
        **{n: getattr(args, n) for n in names},
    )


def main(args: argparse.Namespace) -> int:
    import sys

    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"ccsr upscale: error: {e}", file=sys.stderr)
        return 2
    from ccsr.upscale.run import run_upscale

    try:
        return run_upscale(cfg)
    except KeyboardInterrupt:  # a second Ctrl-C while the first one was being handled
        print("ccsr upscale: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
