"""How much of ccsr-tiny's own detail helps PSNR: the wavelet colour fix at fewer and fewer levels.

    ccsr data tiny-set data/tiny-set
    python benchmarks/tiny_fix_levels.py --data data/tiny-set/eval --levels 5 4 3 2

The wavelet colour fix (``ccsr.color.wavelet_color_fix``, 5 levels in the authors' code) keeps the
decoded image's high band and takes everything coarser from the bicubic canvas. With fewer levels more
of the output comes from the canvas, and at 0 levels it would be the canvas itself (PIL bicubic). So if
the score rises towards bicubic as levels fall, the model's detail at those scales costs PSNR: what a
useful super-resolver must turn around. Each held-out crop is upscaled once (1 step, seed 0, the CLI's
``process_size`` 512, the model's ``border_pad``), the colour fix and the 8-bit resize of the reference
path are applied per level, and PSNR-Y / PIQE (4-px crop) are printed against bicubic, per crop and on
the mean (PIQE: no-reference, lower is better). Used for ccsr-tiny's model card (``ccsr/assets/ccsr-tiny.md``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image
from tiny_quality import load_set, resized, score

from ccsr.image import make_canvas, pil_to_tensor, plan_resize
from ccsr.postprocess import reference_uint8

PROCESS_SIZE = 512


def decoded_and_canvas(
    pipe, lr: Image.Image, seed: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The decoder's 8-bit output at canvas size (no colour fix), the canvas, the output size.

    The pipeline is given the input already enlarged as its resize plan would (the same canvas, the same
    noise shape), so it returns the canvas-sized image before the fix and the final resize."""
    plan = plan_resize(lr.size, 4, PROCESS_SIZE)
    enlarged = lr.resize(plan.enlarged_size, Image.Resampling.BICUBIC)
    if plan_resize(enlarged.size, 4, PROCESS_SIZE).canvas_size != plan.canvas_size:
        raise ValueError(f"{lr.size}: the enlarged input gives another canvas; use square inputs of 64 px")
    out = pipe(
        [enlarged],
        steps=1,
        upscale=4,
        process_size=PROCESS_SIZE,
        generator=[torch.Generator().manual_seed(seed)],
        color_fix="none",
        output_type="pt",
    ).images
    return out.float().cpu(), pil_to_tensor(make_canvas(lr, plan)), plan.output_size


def finish(decoded: torch.Tensor, canvas: torch.Tensor, levels: int, size: tuple[int, int]) -> torch.Tensor:
    """The reference's 8-bit path with ``levels`` wavelet levels, as floats in [0, 1]."""
    pixels = reference_uint8(decoded, canvas, "wavelet", size, levels)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the shipped ccsr-tiny)")
    parser.add_argument("--data", required=True, help="folder with gt/ lr_bicubic/ lr_realesrgan/")
    parser.add_argument("--levels", type=int, nargs="+", default=[5, 4, 3, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from ccsr.data.tiny_data import EVAL_SETS
    from ccsr.metrics.iqa import load_metric
    from ccsr.models.shipped import TINY_MODEL_DIR
    from ccsr.pipeline import CCSRPipeline

    pipe = CCSRPipeline.from_pretrained(args.model or str(TINY_MODEL_DIR))
    if pipe.default_color_fix != "wavelet":
        print(f"note: the model recommends the {pipe.default_color_fix} colour fix, not wavelet")
    metrics = {m: load_metric(m, device="cpu") for m in ("psnr", "piqe")}
    for set_name in EVAL_SETS:
        names, lrs, gt = load_set(Path(args.data), set_name)
        bic = score(metrics, resized(lrs, gt.shape[-1], Image.Resampling.BICUBIC), gt)
        per_level: dict[int, list[torch.Tensor]] = {k: [] for k in args.levels}
        for lr in lrs:
            decoded, canvas, size = decoded_and_canvas(pipe, lr, args.seed)
            for k in args.levels:
                per_level[k].append(finish(decoded, canvas, k, size))
        print(f"{set_name}: bicubic PSNR-Y {bic['psnr'].mean():.3f} dB, PIQE {bic['piqe'].mean():.1f}")
        for k in args.levels:
            s = score(metrics, torch.cat(per_level[k]), gt)
            gain = s["psnr"] - bic["psnr"]
            crops = " ".join(f"{n} {d:+.2f}" for n, d in zip(names, gain))
            print(
                f"  {k} levels: PSNR-Y {s['psnr'].mean():.3f} ({gain.mean():+.3f} dB), PIQE {s['piqe'].mean():.1f}"
            )
            print(f"    per crop: {crops}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
