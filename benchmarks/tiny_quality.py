"""ccsr-tiny's quality on its two held-out sets: PSNR / SSIM / PIQE, G-STD and L-STD over seeds, a figure.

    ccsr data tiny-set data/tiny-set                         # the held-out photographs (once)
    python benchmarks/tiny_quality.py --data data/tiny-set/eval --seeds 5 --steps 1 2 4
    python benchmarks/tiny_quality.py --model runs/ccsr-tiny/ccsr-tiny --seeds 3 --out runs/tq

Held-out sets: ``--data`` names a folder with ``gt/ lr_bicubic/ lr_realesrgan/`` (``ccsr data tiny-set``
writes 25 GT crops of 256x256 from 6 photographs never seen in training to ``OUT_DIR/eval``); without it
the 7 scikit-image crops of ``ccsr.data.tiny_data`` are rebuilt under ``--out``. LR is x4, made by PIL
bicubic (``lr_bicubic``) or by the Real-ESRGAN degradation under a fixed seed (``lr_realesrgan``).
ccsr-tiny runs at the CLI's defaults (``ccsr upscale --steps k``: ``--process-size`` 512, i.e. a 64-px
input is enlarged to a 512 canvas, the model's recommended colour fix unless ``--color-fix`` names
one, the step presets of ccsr.schedule); ``--process-size 256`` runs the model at exactly x4.
Baselines: PIL bicubic and Lanczos x4.

Metrics (pyiqa via ``ccsr.metrics``, the paper's protocol): PSNR and SSIM on the Y channel after a 4-px
border crop; PIQE (no-reference, hand-crafted: no weights to download, lower is better) on the same
crop. ccsr-tiny's numbers are means over ``--seeds`` seeds x images; G-STD = mean over images of the
std over seeds of a metric; L-STD = mean over images of the per-pixel std over seeds (docs/algorithm.md §5.2-5.3).
Writes ``results.json``, ``results.md`` and ``figure.png`` (LR / bicubic / 1-step / 2-step / GT).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ccsr.color import apply_color_fix
from ccsr.options import COLOR_FIXES

METRICS = ("psnr", "ssim", "piqe")
CROP = 4


def load_set(data: Path, name: str) -> tuple[list[str], list[Image.Image], torch.Tensor]:
    """Sorted names, LR PIL images, GT ``(N, 3, H, W)`` in [0, 1]."""
    names = sorted(p.stem for p in (data / "gt").glob("*.png"))
    if not names:
        raise FileNotFoundError(
            f"no GT images in {data / 'gt'}; build the sets with ccsr.data.tiny_data.write_eval_sets"
        )
    lrs = [Image.open(data / name / f"{n}.png").convert("RGB") for n in names]
    gts = torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(data / "gt" / f"{n}.png").convert("RGB")).copy())
            for n in names
        ]
    )
    return names, lrs, gts.permute(0, 3, 1, 2).float() / 255.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit image a user gets (what files hold), back in [0, 1]."""
    return (x.clamp(0, 1) * 255).round() / 255


def score(metrics: dict, sr: torch.Tensor, gt: torch.Tensor) -> dict[str, np.ndarray]:
    from ccsr.metrics.stability import crop_border

    a, b = crop_border(sr, CROP), crop_border(gt, CROP)
    out = {}
    for name, m in metrics.items():
        out[name] = m.score(a, b if m.info.mode == "FR" else None).numpy()
    return out


def upscale(
    pipe,
    lrs: list[Image.Image],
    steps: int,
    seed: int,
    size: int,
    device: str,
    color_fix: str | None = None,
    batch: int = 4,
) -> torch.Tensor:
    """Every LR image x4 at ``process_size=size``, ``batch`` images per call (one generator per image)."""
    outs = []
    for i in range(0, len(lrs), batch):
        chunk = lrs[i : i + batch]
        gens = [torch.Generator(device).manual_seed(seed) for _ in chunk]
        out = pipe(
            chunk,
            steps=steps,
            upscale=4,
            process_size=size,
            generator=gens,
            output_type="pt",
            color_fix=color_fix,
        ).images
        outs.append(to_uint8(out.float().cpu()))
    return torch.cat(outs)


def resized(lrs: list[Image.Image], size: int, method: int) -> torch.Tensor:
    """PIL resize of every LR image to ``size`` x ``size``, ``(N, 3, size, size)`` in [0, 1]."""
    arrs = [torch.from_numpy(np.asarray(im.resize((size, size), method)).copy()) for im in lrs]
    return to_uint8(torch.stack(arrs).permute(0, 3, 1, 2).float() / 255)


@torch.no_grad()
def autoencoder_reconstruction(pipe, gt: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """GT through the model's VAE (posterior mode, the pipeline's border padding): the PSNR no SR output
    of this model can exceed, since every output is a decoded latent."""
    from ccsr.image import pad_canvas

    pad, outs = pipe.default_border_pad, []
    for i in range(0, len(gt), batch):
        x = pad_canvas(gt[i : i + batch], pad) * 2 - 1
        z = pipe.vae.encode(x.to(pipe.vae.dtype)).latent_dist.mode()
        outs.append(to_uint8(pipe._decode(z * pipe.vae.config.scaling_factor, pad).float().cpu()))
    return torch.cat(outs)


def shown_indices(names: list[str], show: list[str] | None) -> list[int]:
    """Indices of the crops the figure shows: ``show`` by name, else the first and last."""
    if not show:
        return [0, len(names) - 1]
    missing = [n for n in show if n not in names]
    if missing:
        raise SystemExit(f"--show {' '.join(missing)}: no such crop; the set has {', '.join(names)}")
    return [names.index(n) for n in show]


def figure(rows: list[tuple[str, list[torch.Tensor]]], columns: list[str], path: Path) -> None:
    """A grid of ``(label, [image per column])`` rows; the LR column is shown with nearest-neighbour x4."""
    tile = rows[0][1][-1].shape[-1]
    pad, head = 4, 18
    w = len(columns) * (tile + pad) + 150
    h = head + len(rows) * (tile + pad)
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    for j, c in enumerate(columns):
        draw.text((150 + j * (tile + pad) + 4, 3), c, fill="black")
    for i, (label, images) in enumerate(rows):
        y = head + i * (tile + pad)
        draw.text((4, y + tile // 2), label, fill="black")
        for j, im in enumerate(images):
            arr = (im.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            pil = Image.fromarray(arr)
            if pil.size[0] != tile:
                pil = pil.resize((tile, tile), Image.Resampling.NEAREST)
            canvas.paste(pil, (150 + j * (tile + pad), y))
    canvas.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the shipped ccsr-tiny)")
    parser.add_argument(
        "--vae",
        default=None,
        help="a vae/ folder to use instead of the model's (e.g. its autoencoder ceiling)",
    )
    parser.add_argument(
        "--data", default=None, help="folder with gt/ lr_bicubic/ lr_realesrgan/ (default: rebuilt)"
    )
    parser.add_argument("--out", default="runs/tiny_quality")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--process-size",
        type=int,
        default=512,
        help="as ccsr upscale --process-size (default 512, the CLI's)",
    )
    parser.add_argument("--batch", type=int, default=4, help="images per pipeline call")
    parser.add_argument(
        "--show",
        nargs="+",
        default=None,
        metavar="NAME",
        help="crops (file stems) in the figure; default: the first and last in name order",
    )
    parser.add_argument(
        "--color-fix",
        choices=COLOR_FIXES,
        default=None,
        help="default: the model's recommendation (inference_defaults.json), else adain",
    )
    args = parser.parse_args()

    from ccsr.data.tiny_data import EVAL_SETS, write_eval_sets
    from ccsr.metrics.iqa import load_metric
    from ccsr.metrics.stability import g_std, l_std
    from ccsr.models.shipped import TINY_MODEL_DIR
    from ccsr.pipeline import CCSRPipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else write_eval_sets(out / "eval")
    model = args.model or str(TINY_MODEL_DIR)
    pipe = CCSRPipeline.from_pretrained(model, vae=args.vae).to(args.device)
    metrics = {m: load_metric(m, device=args.device) for m in METRICS}
    color_fix = args.color_fix or pipe.default_color_fix
    results: dict = {
        "model": model,
        "color_fix": color_fix,
        "seeds": args.seeds,
        "process_size": args.process_size,
        "data": str(data),
        "steps": args.steps,
        "sets": {},
    }
    fig_rows = []
    start = time.perf_counter()
    names, _, gt_all = load_set(data, EVAL_SETS[0])
    recon = autoencoder_reconstruction(pipe, gt_all, args.batch)
    results["autoencoder"] = {m: float(v.mean()) for m, v in score(metrics, recon, gt_all).items()}
    print("autoencoder (GT -> encoder -> decoder): " + json.dumps(results["autoencoder"]), flush=True)
    for set_name in EVAL_SETS:
        names, lrs, gt = load_set(data, set_name)
        size = gt.shape[-1]
        rows = {}
        bic = resized(lrs, size, Image.Resampling.BICUBIC)
        for label, baseline in (("bicubic", bic), ("lanczos", resized(lrs, size, Image.Resampling.LANCZOS))):
            rows[label] = {m: float(v.mean()) for m, v in score(metrics, baseline, gt).items()}
        # The ceiling users get: the colour fix replaces the decoded image's low frequencies by the
        # (upscaled) input's, so only the autoencoder's high-frequency error is left to bound the output.
        fixed = to_uint8(apply_color_fix(recon, bic, color_fix, pipe.default_wavelet_levels))
        rows["autoencoder+fix"] = {m: float(v.mean()) for m, v in score(metrics, fixed, gt).items()}
        firsts = {}
        for k in args.steps:
            samples = [
                upscale(pipe, lrs, k, seed, args.process_size, args.device, color_fix, args.batch)
                for seed in range(args.seeds)
            ]
            firsts[k] = samples[0]
            per = [score(metrics, x, gt) for x in samples]
            row = {}
            for m in METRICS:
                mat = np.stack([p[m] for p in per])  # (seeds, images)
                row[m] = float(mat.mean())
                row[f"{m}_gstd"] = float(g_std(torch.from_numpy(mat)))
            stack = torch.stack(samples)  # (seeds, images, 3, H, W)
            row["lstd"] = float(np.mean([float(l_std(stack[:, i])) for i in range(len(names))]))
            rows[f"{k}-step"] = row
            print(f"{set_name} {k}-step: " + ", ".join(f"{m} {v:.4f}" for m, v in row.items()), flush=True)
        for label in ("bicubic", "lanczos", "autoencoder+fix"):
            print(
                f"{set_name} {label}: " + ", ".join(f"{m} {v:.4f}" for m, v in rows[label].items()),
                flush=True,
            )
        results["sets"][set_name] = rows
        for i in shown_indices(names, args.show):
            cols = [Image.open(data / set_name / f"{names[i]}.png")]
            lr_t = torch.from_numpy(np.asarray(cols[0].convert("RGB")).copy()).permute(2, 0, 1).float() / 255
            shown = [firsts[k][i] for k in args.steps[:2]]
            fig_rows.append((f"{names[i]}\n{set_name}", [lr_t, bic[i], *shown, gt[i]]))
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    steps_shown = [f"{k}-step" for k in args.steps[:2]]
    figure(fig_rows, ["LR (x4 nearest)", "bicubic", *steps_shown, "GT"], out / "figure.png")
    print(markdown(results))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'figure.png'}")
    return 0


def markdown(results: dict) -> str:
    lines = []
    if "autoencoder" in results:
        a = results["autoencoder"]
        lines += [
            f"Autoencoder reconstruction of the GT crops (no colour fix): PSNR {a['psnr']:.2f} dB, "
            f"SSIM {a['ssim']:.4f}, PIQE {a['piqe']:.2f}; process_size {results.get('process_size')}, "
            f"colour fix {results.get('color_fix')}, {results.get('seeds')} seeds.",
            "Row autoencoder+fix: that reconstruction after the model's colour fix against each set's bicubic "
            "upscale, the ceiling of any output at these settings (the fix keeps only the decoder's high "
            "frequencies).",
            "",
        ]
    lines += [
        "| set | method | PSNR (dB) | SSIM | PIQE (lower better) | G-STD PSNR | G-STD SSIM | G-STD PIQE | L-STD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for set_name, rows in results["sets"].items():
        for method, r in rows.items():
            g = [f"{r[f'{m}_gstd']:.4f}" if f"{m}_gstd" in r else "-" for m in METRICS]
            lstd = f"{r['lstd']:.4f}" if "lstd" in r else "-"
            lines.append(
                f"| {set_name} | {method} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['piqe']:.2f} | {' | '.join(g)} | {lstd} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
