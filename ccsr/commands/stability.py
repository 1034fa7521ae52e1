"""``ccsr stability``: variance across seeds (G-STD per metric, L-STD, heat maps) of a run with K >= 2 samples."""

from __future__ import annotations

import argparse

from ccsr.commands.evaluate import add_arguments as _add_arguments
from ccsr.commands.evaluate import run

HELP = "stability across samples: G-STD per metric, L-STD and per-pixel std heat maps (needs >= 2 samples per image)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    return run(args, "stability", min_samples=2)
