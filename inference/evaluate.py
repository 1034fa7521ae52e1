"""Score a run folder: the same code as `ccsr evaluate` (use `ccsr stability` for K-sample runs).

    python inference/evaluate.py outputs/run --gt data/RealSR/HR --metrics psnr ssim lpips
    python inference/evaluate.py outputs/run --gt data/RealSR/HR --metrics paper --device cuda

Writes report.html, report.md, report.json, per_image.csv/json and report_files/ into the run folder
(or --out). Run `python inference/evaluate.py --help` for every option.
"""

import sys

from ccsr.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
