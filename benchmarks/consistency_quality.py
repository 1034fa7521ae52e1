"""Does picking among K seeds help? PSNR-Y / SSIM of the consensus pick and of the mean vs a single seed.

    python benchmarks/consistency_quality.py                 # shipped ccsr-tiny, K = 5, 1 step
    python benchmarks/consistency_quality.py --samples 10 --crop 128 --out runs/cq

On ccsr-tiny's two held-out sets (``ccsr.data.tiny_data``, as ``benchmarks/tiny_quality.py``: crops of
scikit-image's chelsea / coffee / camera never seen in training, x4 LR by PIL bicubic or by the
Real-ESRGAN degradation under a fixed seed), every LR image is upscaled x4 with seeds 0 .. K-1 at
1 step (the model's recommended colour fix), exactly as ``ccsr upscale --samples K`` does (one CPU
generator per image and seed). Scored on the 8-bit images a user gets:

* **single seed, mean**: the metric of one seed, averaged over the K seeds (what one run gives on average);
* **single seed, worst**: for every image its worst seed, averaged over images (the outlier a user fears);
* **consensus**: ``ccsr.consistency.consensus_pick`` (medoid, L1 on the luma) of the K samples;
* **mean of K**: ``ccsr.consistency.mean_image`` of the K float outputs, rounded once.

PSNR and SSIM on the Y channel after a 4-px border crop (pyiqa via ``ccsr.metrics``, the paper's
protocol). Writes ``results.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_quality import load_set, score, to_uint8  # noqa: E402  (the held-out sets and their scoring)

METRICS = ("psnr", "ssim")


def upscale_float(pipe, lrs, seed: int, size: int, color_fix: str | None) -> torch.Tensor:
    """``(N, 3, H, W)`` float outputs in [0, 1], one generator per image seeded ``seed``."""
    gens = [torch.Generator("cpu").manual_seed(seed) for _ in lrs]
    out = pipe(
        lrs, steps=1, upscale=4, process_size=size, generator=gens, output_type="pt", color_fix=color_fix
    )
    return out.images.float().cpu().clamp(0, 1)


def evaluate_set(pipe, metrics, data: Path, set_name: str, samples: int, color_fix: str | None) -> dict:
    from ccsr.consistency import consensus_pick, mean_image

    names, lrs, gt = load_set(data, set_name)
    floats = torch.stack([upscale_float(pipe, lrs, s, gt.shape[-1], color_fix) for s in range(samples)])
    singles = to_uint8(floats)  # (K, N, 3, H, W): what K single-seed runs write
    per_seed = [score(metrics, singles[s], gt) for s in range(samples)]  # K x {metric: (N,)}
    picks = [consensus_pick(floats[:, i].numpy()).index for i in range(len(names))]
    consensus = torch.stack([singles[k, i] for i, k in enumerate(picks)])
    mean = to_uint8(
        torch.stack([torch.from_numpy(mean_image(floats[:, i].numpy())) for i in range(len(names))])
    )
    cons_s, mean_s = score(metrics, consensus, gt), score(metrics, mean.float(), gt)
    rows: dict = {}
    for m in METRICS:
        mat = np.stack([p[m] for p in per_seed])  # (seeds, images); higher is better for both
        rows.setdefault("single seed, mean", {})[m] = float(mat.mean())
        rows.setdefault("single seed, worst", {})[m] = float(mat.min(axis=0).mean())
        rows.setdefault("consensus of K", {})[m] = float(cons_s[m].mean())
        rows.setdefault("mean of K", {})[m] = float(mean_s[m].mean())
    rows["consensus of K"]["picked_seeds"] = picks
    return {"images": len(names), "rows": rows}


def markdown(results: dict) -> str:
    lines = ["| set | output | PSNR-Y (dB) | SSIM |", "|---|---|---|---|"]
    for set_name, r in results["sets"].items():
        for method, row in r["rows"].items():
            lines.append(
                f"| {set_name} ({r['images']} images) | {method} | {row['psnr']:.2f} | {row['ssim']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the shipped ccsr-tiny)")
    parser.add_argument("--samples", type=int, default=5, help="K seeds per image (default 5)")
    parser.add_argument(
        "--crop", type=int, default=256, help="GT crop side of the held-out sets (LR: crop / 4)"
    )
    parser.add_argument("--out", default="runs/consistency_quality")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from ccsr.data.tiny_data import EVAL_SETS, write_eval_sets
    from ccsr.metrics.iqa import load_metric
    from ccsr.models.shipped import TINY_MODEL_DIR
    from ccsr.pipeline import CCSRPipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = write_eval_sets(out / f"eval{args.crop}", size=args.crop)
    model = args.model or str(TINY_MODEL_DIR)
    pipe = CCSRPipeline.from_pretrained(model).to(args.device)
    metrics = {m: load_metric(m, device=args.device) for m in METRICS}
    color_fix = pipe.default_color_fix
    start = time.perf_counter()
    results = {"model": model, "samples": args.samples, "crop": args.crop, "steps": 1, "color_fix": color_fix}
    results["sets"] = {s: evaluate_set(pipe, metrics, data, s, args.samples, color_fix) for s in EVAL_SETS}
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(
        f"K = {args.samples}, 1 step, colour fix {color_fix}, {results['seconds']} s; wrote {out / 'results.json'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
