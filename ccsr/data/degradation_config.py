"""Real-ESRGAN degradation parameters as a strict dataclass (``configs/data/realesrgan.yaml``).

Pure (no torch, no basicsr), so a config can be checked before anything heavy loads; the
degradation itself is :mod:`ccsr.data.degradation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ccsr.config import check

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


@dataclass(frozen=True)
class DegradationOrder:
    """One order of Real-ESRGAN's degradation: blur -> random resize -> noise -> JPEG (docs/algorithm.md §3.4)."""

    blur_prob: float = 1.0  # the first order always blurs, the second with p=0.5
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1  # a sinc (ringing) kernel instead of the mixed ones
    blur_sigma: tuple[float, float] = (0.2, 1.5)
    betag_range: tuple[float, float] = (0.5, 2.0)  # generalized Gaussian shape
    betap_range: tuple[float, float] = (1.0, 1.5)  # plateau shape
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.3, 1.5)
    gaussian_noise_prob: float = 0.5  # else Poisson noise
    noise_range: tuple[float, float] = (1.0, 15.0)  # Gaussian sigma, in 8-bit levels
    poisson_scale_range: tuple[float, float] = (0.05, 2.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (60.0, 95.0)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kernel_list) - set(KERNEL_TYPES))
        check(not unknown, f"kernel_list: unknown kernel types {unknown}; valid: {', '.join(KERNEL_TYPES)}")
        check(
            len(self.kernel_prob) == len(self.kernel_list),
            f"kernel_prob has {len(self.kernel_prob)} values for {len(self.kernel_list)} kernel types",
        )
        for name in ("blur_prob", "sinc_prob", "gaussian_noise_prob", "gray_noise_prob"):
            v = getattr(self, name)
            check(0.0 <= v <= 1.0, f"{name}={v} must be a probability in [0, 1]")
        # basicsr's kernel samplers assert a non-empty sigma interval.
        lo, hi = self.blur_sigma
        check(0 < lo < hi, f"blur_sigma=({lo}, {hi}) must satisfy 0 < low < high (basicsr needs an interval)")
        for name in ("betag_range", "betap_range", "resize_range", "jpeg_range"):
            lo, hi = getattr(self, name)
            check(0 < lo <= hi, f"{name}=({lo}, {hi}) must satisfy 0 < low <= high")
        for name in ("noise_range", "poisson_scale_range"):  # 0 turns the noise off
            lo, hi = getattr(self, name)
            check(0 <= lo <= hi, f"{name}=({lo}, {hi}) must satisfy 0 <= low <= high")
        check(
            self.resize_range[0] <= 1.0 <= self.resize_range[1],
            f"resize_range={self.resize_range} must contain 1",
        )
        check(self.jpeg_range[1] <= 100, f"jpeg_range={self.jpeg_range}: JPEG quality is at most 100")
        # basicsr's DiffJPEG quantises with tables scaled by (200 - 2q) / 100: q = 100 divides by 0.
        check(
            self.jpeg_range[0] < 100, f"jpeg_range={self.jpeg_range}: the low end must be below 100 (use 99)"
        )
        check(
            sum(self.resize_prob) > 0 and min(self.resize_prob) >= 0,
            f"resize_prob={self.resize_prob} must be >= 0, not all 0",
        )


@dataclass(frozen=True)
class DegradationConfig:
    """Real-ESRGAN second-order degradation with CCSR's parameters (``params_ccsr.yml``, docs/algorithm.md §3.4).

    The defaults are the reference values; ``configs/data/realesrgan.yaml`` spells them out (a test keeps
    the two equal). The reference's gray_prob and color_jitter_prob are 0 and are not implemented.
    """

    scale: int = 4  # LR = GT / scale before it is resized back
    kernel_size_range: tuple[int, int] = (7, 21)  # odd blur-kernel sizes, zero-padded to the largest
    first: DegradationOrder = field(default_factory=DegradationOrder)
    second: DegradationOrder = field(
        default_factory=lambda: DegradationOrder(
            blur_prob=0.5,
            blur_sigma=(0.2, 1.0),
            resize_prob=(0.3, 0.4, 0.3),
            resize_range=(0.6, 1.2),
            noise_range=(1.0, 12.0),
            poisson_scale_range=(0.05, 1.0),
            jpeg_range=(60.0, 100.0),
        )
    )
    final_sinc_prob: float = 0.8  # sinc filter after resizing to GT / scale
    resize_back: bool = True  # LR resized back to the GT size (CCSR conditions at output resolution)
    shared_resize: bool = False  # true: one resize draw per batch (Real-ESRGAN); false: per image (CCSR)
    # Probability that an image skips the degradation and is only bicubic-downsampled (antialiased)
    # by ``scale`` (and bicubic-resized back): the clean x4 case, which a model trained only on
    # Real-ESRGAN's degradations over-smooths. 0 = the reference (no extra random draw at all).
    clean_prob: float = 0.0

    def __post_init__(self) -> None:
        check(self.scale >= 1, f"scale={self.scale} must be >= 1")
        lo, hi = self.kernel_size_range
        check(
            lo % 2 == 1 and hi % 2 == 1 and 3 <= lo <= hi,
            f"kernel_size_range=({lo}, {hi}) must be odd with 3 <= low <= high",
        )
        check(0.0 <= self.final_sinc_prob <= 1.0, f"final_sinc_prob={self.final_sinc_prob} must be in [0, 1]")
        check(0.0 <= self.clean_prob <= 1.0, f"clean_prob={self.clean_prob} must be a probability in [0, 1]")

    def min_gt_size(self) -> int:
        """Smallest GT side the pipeline accepts: the blurs (on the GT, on the first-order output and the
        final sinc on GT / scale) reflect-pad by the kernel radius, which must stay below the image side."""
        radius = self.kernel_size_range[1] // 2
        smallest = min(self.first.resize_range[0], 1.0 / self.scale)
        return int(math.ceil((radius + 1) / smallest))
