"""ccsr-tiny's speed target (128x128 -> 512x512 at 1 step in at most 3 s on a 2-core CPU), now a thin
wrapper over ``ccsr bench`` (the one home of speed measurement):

    python benchmarks/tiny_speed.py --steps 1 2 --repeats 5     # = ccsr bench --model tiny --steps 1 2 --repeats 5

The per-image time ``ccsr bench`` reports is the whole call as a user runs it (VAE encode, ControlNet +
UNet, VAE decode, colour fix, resize; the prompt is cached after the first call) plus the PNG encode of
the output; the call alone is printed beside it. ``--random`` (random weights of an architecture file) is
gone: time a saved model folder with ``--model FOLDER``.
"""

from __future__ import annotations

import argparse
import sys

from ccsr.cli import main as ccsr_main


def translate(argv: list[str]) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="a model folder (default: the shipped ccsr-tiny)")
    ap.add_argument("--size", type=int, default=128, help="input side (output = 4x)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    out = ["bench", "--model", a.model, "--device", "cpu", "--size", str(a.size), str(4 * a.size)]
    return out + ["--steps", *map(str, a.steps), "--repeats", str(a.repeats), "--images", "0"]


if __name__ == "__main__":
    sys.exit(ccsr_main(translate(sys.argv[1:])))
