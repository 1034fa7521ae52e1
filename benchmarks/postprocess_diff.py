"""How far the authors' 8-bit post-processing (``postprocess="reference"``) is from the float path.

    python benchmarks/postprocess_diff.py                 # shipped ccsr-tiny, 3 crops x 3 colour fixes
    python benchmarks/postprocess_diff.py --model /models/ccsr-v2 --device cuda

For each colour fix and input size, the same latents (same seed) are post-processed both ways
(:mod:`ccsr.postprocess`) and the 8-bit outputs compared: max and mean absolute difference in levels,
mean signed difference (reference - float: the truncation makes it about -0.5) and the share of
values that differ by 2 levels or more. Inputs are crops of scikit-image's astronaut, 1 step.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from ccsr.options import COLOR_FIXES

#: (width, height, scale, process_size): odd x2, odd x4, below the process size, a larger x4.
SIZES = ((37, 23, 2, 32), (37, 23, 4, 64), (37, 23, 4, 512), (96, 64, 4, 256))


def main() -> None:
    from skimage import data

    from ccsr.image import make_canvas, pil_to_tensor, plan_resize
    from ccsr.models.shipped import resolve_model_root
    from ccsr.pipeline import CCSRPipeline
    from ccsr.postprocess import finish_images

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    pipe = CCSRPipeline.from_pretrained(resolve_model_root(args.model)).to(args.device)
    astronaut = data.astronaut()
    rows = []
    for w, h, scale, ps in SIZES:
        lr = Image.fromarray(np.ascontiguousarray(astronaut[100 : 100 + h, 180 : 180 + w]))
        plan = plan_resize(lr.size, scale, ps)
        canvas = pil_to_tensor(make_canvas(lr, plan)).to(args.device)
        gen = torch.Generator().manual_seed(args.seed)
        lat = pipe(lr, upscale=scale, process_size=ps, generator=gen, output_type="latent").images
        with torch.no_grad():
            decoded = pipe._decode(lat)
        for fix in COLOR_FIXES:
            out = {}
            for mode in ("reference", "float"):
                img = finish_images(decoded, canvas, fix, plan.output_size, mode, "pil")[0]
                out[mode] = np.asarray(img, dtype=np.int16)
            d = out["reference"] - out["float"]
            rows.append(
                {
                    "input": f"{w}x{h}",
                    "scale": scale,
                    "canvas": "x".join(map(str, plan.canvas_size)),
                    "color_fix": fix,
                    "max_abs": int(np.abs(d).max()),
                    "mean_abs": round(float(np.abs(d).mean()), 3),
                    "mean_signed": round(float(d.mean()), 3),
                    "share_ge2": round(float((np.abs(d) >= 2).mean()), 4),
                }
            )
    print("| input | scale | canvas | colour fix | max abs | mean abs | mean (ref - float) | share >= 2 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['input']} | x{r['scale']} | {r['canvas']} | {r['color_fix']} | {r['max_abs']} | "
            f"{r['mean_abs']} | {r['mean_signed']} | {r['share_ge2']:.2%} |"
        )
    print(json.dumps({"model": args.model, "seed": args.seed, "rows": rows}))


if __name__ == "__main__":
    main()
