"""Former per-network timing script, now a thin wrapper over ``ccsr bench`` (the one home of speed measurement).

    python benchmarks/components.py --model full --input 128 --steps 1 --repeats 3
    python benchmarks/components.py --model full --device cuda --dtype fp16 --channels-last --compile

runs ``ccsr bench --model full-size --size 128 512 --steps 1 --repeats 3 ...``, which times every stage of
the call from outside (prompt, VAE encode, ControlNet, UNet, VAE decode, colour fix, resize, PNG encode),
counts the FLOPs and reports peak memory. ``--model tiny-random`` is gone: use ``--model tiny``.
"""

from __future__ import annotations

import argparse
import sys

from ccsr.cli import main as ccsr_main


def translate(argv: list[str]) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="full")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--upscale", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args(argv)
    model = {"full": "full-size", "tiny-random": "tiny"}.get(a.model, a.model)
    out = ["bench", "--model", model, "--device", a.device, "--precision", a.dtype, "--steps", str(a.steps)]
    out += ["--size", str(a.input), str(a.input * a.upscale), "--repeats", str(a.repeats), "--images", "0"]
    return out + ["--channels-last"] * a.channels_last + ["--compile"] * a.compile


if __name__ == "__main__":
    sys.exit(ccsr_main(translate(sys.argv[1:])))
