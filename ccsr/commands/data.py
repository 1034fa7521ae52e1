"""``ccsr data``: build training / evaluation data sets offline.

    ccsr data tiny-set OUT_DIR [--packages DIR]

``tiny-set`` is ccsr-tiny's data (:mod:`ccsr.data.tiny_set`): photographs from Debian's wallpaper
packages and from scikit-image, scikit-learn and matplotlib, split by source image into ``train/`` and a
held-out ``eval/`` set, with a manifest of every file's source, licence and SHA-256.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "build data sets offline: 'tiny-set' = ccsr-tiny's training and held-out photographs"


def _default_packages() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ccsr" / "debian"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=["tiny-set"], help="which data set to build")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new folder to write (must not exist)")
    parser.add_argument(
        "--packages",
        default=None,
        help="folder of extracted Debian packages (DIR/<package>/usr/share/...) or their .deb files; "
        "missing ones are fetched into it with 'apt-get download' (default: ~/.cache/ccsr/debian)",
    )


def main(args: argparse.Namespace) -> int:
    from ccsr.data.tiny_set import build_tiny_set

    packages = Path(args.packages) if args.packages else _default_packages()
    try:
        manifest = build_tiny_set(args.out_dir, packages)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"ccsr data: error: {e}", file=sys.stderr)
        return 2
    kept = [f for f in manifest["files"] if f["split"] != "dropped"]
    print(
        f"wrote {args.out_dir}: {len(manifest['train_source_images'])} training photographs "
        f"({manifest['train_files']} files in train/), {len(manifest['heldout_crops'])} held-out crops "
        f"from {sum(f['split'] == 'heldout' for f in kept)} photographs; "
        f"{len(manifest['files']) - len(kept)} files dropped (reasons in manifest.json)"
    )
    return 0
