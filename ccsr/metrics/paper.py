"""The CCSR-v2 paper's metric set, pinned to pyiqa variants (light: the CLI lists it before torch loads)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MetricSpec:
    """How one of our metric names maps onto pyiqa."""

    pyiqa_name: str
    options: Mapping[str, object] = field(default_factory=dict)
    note: str = ""


#: The CCSR-v2 paper's metrics, in its table's order, pinned to pyiqa variants.
PAPER_METRICS: dict[str, MetricSpec] = {
    "psnr": MetricSpec(
        "psnr", {"test_y_channel": True, "color_space": "ycbcr"}, "Y channel of YCbCr, as CCSR's cal_iqa.py"
    ),
    "ssim": MetricSpec(
        "ssim", {"test_y_channel": True, "color_space": "ycbcr"}, "Y channel of YCbCr, as CCSR's cal_iqa.py"
    ),
    "lpips": MetricSpec("lpips", {}, "AlexNet, LPIPS v0.1 (pyiqa default, as cal_iqa.py)"),
    "dists": MetricSpec("dists", {}, "VGG16 DISTS"),
    "fid": MetricSpec(
        "fid",
        {},
        "clean-fid mode, Inception pt_inception-2015-12-05; GT folder vs each sample folder, no crop",
    ),
    "niqe": MetricSpec("niqe", {}, "Y channel, pyiqa's MATLAB-compatible parameters"),
    "clipiqa": MetricSpec("clipiqa", {}, "CLIP-IQA (RN50, antonym prompts), not CLIP-IQA+"),
    "musiq": MetricSpec("musiq", {}, "MUSIQ trained on KonIQ-10k"),
    "maniqa": MetricSpec(
        "maniqa-pipal", {}, "MANIQA trained on PIPAL, as OSEDiff's test_metrics.py (same lab)"
    ),
}
