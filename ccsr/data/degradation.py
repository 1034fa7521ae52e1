"""Real-ESRGAN second-order degradation (Wang et al. 2021, "Real-ESRGAN: Training Real-World Blind
Super-Resolution with Pure Synthetic Data", §3) on basicsr's own functions, with CCSR's parameters.

The only module of ``ccsr`` that imports basicsr. basicsr 1.4.2 (its latest release) imports
``torchvision.transforms.functional_tensor``, which torchvision 0.17 removed; the one function it
needs (``rgb_to_grayscale``) still lives in ``torchvision.transforms.functional``, so a tiny alias
module is registered under the old name before basicsr is imported. That is the whole fix (plus
``distutils.version.LooseVersion``, which Python 3.12 dropped, for interpreters without setuptools).

Usage on the training device, outside the Dataset (so DataLoader workers stay free of CUDA):

    >>> degrade = RealESRGANDegradation(load_config(DegradationConfig, "configs/data/realesrgan.yaml"))
    >>> lq = degrade(gt)            # gt, lq: (B, 3, H, W) float in [0, 1]; lq quantised to 8 bits

Random draws come from the global python / numpy / torch generators, as in basicsr (accelerate seeds
and checkpoints all three); pass ``seed=`` for a draw that is reproducible and leaves them untouched.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

from ccsr.data.degradation_config import DegradationConfig, DegradationOrder

_LEGACY = "torchvision.transforms.functional_tensor"


def _register_legacy_aliases() -> None:
    """Let basicsr 1.4.2 import on current torchvision (and on Python >= 3.12 without setuptools)."""
    if _LEGACY not in sys.modules:
        try:
            __import__(_LEGACY)
        except ModuleNotFoundError:
            from torchvision.transforms import functional

            alias = types.ModuleType(_LEGACY)
            vars(alias).update(rgb_to_grayscale=functional.rgb_to_grayscale)
            sys.modules[_LEGACY] = alias
    try:  # basicsr.archs.arch_util compares torchvision versions with distutils' LooseVersion
        __import__("distutils.version")
    except ModuleNotFoundError:
        from packaging.version import Version

        version = types.ModuleType("distutils.version")
        vars(version).update(LooseVersion=Version)
        vars(sys.modules.setdefault("distutils", types.ModuleType("distutils"))).update(version=version)
        sys.modules["distutils.version"] = version


_register_legacy_aliases()
try:
    from basicsr.data.degradations import (
        circular_lowpass_kernel,
        random_add_gaussian_noise_pt,
        random_add_poisson_noise_pt,
        random_mixed_kernels,
    )
    from basicsr.utils import DiffJPEG
    from basicsr.utils.img_process_util import filter2D
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"ccsr.data.degradation needs basicsr 1.4.2 ({e}). It ships as an sdist that needs torch at build time: "
        "pip install cython && pip install --no-build-isolation basicsr==1.4.2"
    ) from e

_MODES = ("area", "bilinear", "bicubic")


def _stack(kernels: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(kernels)).float()


def _filter(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    # basicsr's filter2D uses .view, which fails on the strided tensors DiffJPEG returns.
    return filter2D(x.contiguous(), kernels)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed python, numpy and torch for one draw, then put their previous states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class RealESRGANDegradation:
    """Batched, device-agnostic second-order degradation. See :class:`ccsr.config.DegradationConfig`."""

    def __init__(self, config: DegradationConfig | None = None) -> None:
        self.config = config or DegradationConfig()
        lo, hi = self.config.kernel_size_range
        self.kernel_sizes = list(range(lo, hi + 1, 2))
        self.kernel_pad = hi
        self._jpeg: dict[torch.device, torch.nn.Module] = {}

    # ----------------------------------------------------------------- kernels (CPU, numpy)
    def _blur_kernel(self, order: DegradationOrder) -> np.ndarray:
        size = random.choice(self.kernel_sizes)
        if np.random.uniform() < order.sinc_prob:
            # Small kernels cannot represent very low cut-offs (Real-ESRGAN's ranges for sizes 7..21).
            omega = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
            kernel = circular_lowpass_kernel(omega, size, pad_to=False)
        else:
            kernel = random_mixed_kernels(
                list(order.kernel_list),
                list(order.kernel_prob),
                size,
                order.blur_sigma,
                order.blur_sigma,
                [-math.pi, math.pi],
                order.betag_range,
                order.betap_range,
                noise_range=None,
            )
        pad = (self.kernel_pad - size) // 2
        return np.pad(kernel, ((pad, pad), (pad, pad)))

    def _final_kernel(self) -> np.ndarray:
        if np.random.uniform() < self.config.final_sinc_prob:
            size = random.choice(self.kernel_sizes)
            return circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), size, pad_to=self.kernel_pad)
        pulse = np.zeros((self.kernel_pad, self.kernel_pad))
        pulse[self.kernel_pad // 2, self.kernel_pad // 2] = 1.0  # identity filter
        return pulse

    def sample_kernels(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image blur kernels of both orders and the final sinc, each ``(B, k, k)`` float32 on CPU."""
        k1, k2, k3 = [], [], []
        for _ in range(batch_size):
            k1.append(self._blur_kernel(self.config.first))
            k2.append(self._blur_kernel(self.config.second))
            k3.append(self._final_kernel())
        return _stack(k1), _stack(k2), _stack(k3)

    # ----------------------------------------------------------------- the pipeline (device)
    def _jpeger(self, device: torch.device) -> torch.nn.Module:
        if device not in self._jpeg:
            self._jpeg[device] = DiffJPEG(differentiable=False).to(device)
        return self._jpeg[device]

    @staticmethod
    def _resize_scale(order: DegradationOrder) -> float:
        kind = random.choices(["up", "down", "keep"], list(order.resize_prob))[0]
        if kind == "up":
            return float(np.random.uniform(1, order.resize_range[1]))
        if kind == "down":
            return float(np.random.uniform(order.resize_range[0], 1))
        return 1.0

    def _noise_and_jpeg(self, x: torch.Tensor, order: DegradationOrder, jpeg: bool = True) -> torch.Tensor:
        if np.random.uniform() < order.gaussian_noise_prob:
            x = random_add_gaussian_noise_pt(
                x, sigma_range=order.noise_range, clip=True, rounds=False, gray_prob=order.gray_noise_prob
            )
        else:
            x = random_add_poisson_noise_pt(
                x,
                scale_range=order.poisson_scale_range,
                gray_prob=order.gray_noise_prob,
                clip=True,
                rounds=False,
            )
        return self._jpeg_compress(x, order) if jpeg else x

    def _jpeg_compress(self, x: torch.Tensor, order: DegradationOrder) -> torch.Tensor:
        quality = x.new_zeros(x.size(0)).uniform_(*order.jpeg_range)
        # Clamp first: values outside [0, 1] give JPEG artefacts that real images never show.
        return self._jpeger(x.device)(x.clamp(0, 1), quality=quality)

    def _degrade(
        self, gt: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, k3: torch.Tensor
    ) -> torch.Tensor:
        cfg, (h, w) = self.config, gt.shape[-2:]
        # First order: blur, resize, noise, JPEG.
        x = _filter(gt, k1)
        x = F.interpolate(x, scale_factor=self._resize_scale(cfg.first), mode=random.choice(_MODES))
        x = self._noise_and_jpeg(x, cfg.first)
        # Second order: optional blur, resize relative to the LR size, noise.
        if np.random.uniform() < cfg.second.blur_prob:
            x = _filter(x, k2)
        s = self._resize_scale(cfg.second)
        size = (max(1, int(h / cfg.scale * s)), max(1, int(w / cfg.scale * s)))
        x = F.interpolate(x, size=size, mode=random.choice(_MODES))
        x = self._noise_and_jpeg(x, cfg.second, jpeg=False)
        # [resize to LR size + sinc] and JPEG, in random order (other orders give twisted lines, per Real-ESRGAN).
        lr_size = (h // cfg.scale, w // cfg.scale)
        if np.random.uniform() < 0.5:
            x = _filter(F.interpolate(x, size=lr_size, mode=random.choice(_MODES)), k3)
            x = self._jpeg_compress(x, cfg.second)
        else:
            x = self._jpeg_compress(x, cfg.second)
            x = _filter(F.interpolate(x, size=lr_size, mode=random.choice(_MODES)), k3)
        if cfg.resize_back:
            x = F.interpolate(x, size=(h, w), mode=random.choice(_MODES))
        return x

    def _clean(self, gt: torch.Tensor) -> torch.Tensor:
        """Bicubic x``scale`` downsampling only (antialiased, as PIL), resized back bicubically as the
        pipeline resizes an LR input."""
        cfg, (h, w) = self.config, gt.shape[-2:]
        x = F.interpolate(gt, size=(h // cfg.scale, w // cfg.scale), mode="bicubic", antialias=True)
        if cfg.resize_back:
            x = F.interpolate(x, size=(h, w), mode="bicubic")
        return x.clamp(0, 1)

    @torch.no_grad()
    def __call__(self, gt: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Degrade ``gt`` ``(B, 3, H, W)`` in ``[0, 1]`` on its own device.

        Returns the LR image, 8-bit quantised, in ``[0, 1]``: ``(B, 3, H, W)`` with ``resize_back``
        (CCSR), else ``(B, 3, H // scale, W // scale)``.
        """
        if gt.ndim != 4 or gt.shape[1] != 3:
            raise ValueError(f"gt must be (B, 3, H, W), got {tuple(gt.shape)}")
        need = self.config.min_gt_size()
        if min(gt.shape[-2:]) < need:
            raise ValueError(
                f"gt is {tuple(gt.shape[-2:])}: the degradation needs both sides >= {need} "
                f"(kernel sizes {self.config.kernel_size_range}, scale {self.config.scale}); use larger crops"
            )
        ctx = _seeded(seed, gt.device) if seed is not None else contextlib.nullcontext()
        with ctx, torch.autocast(gt.device.type, enabled=False):
            gt = gt.float()
            k1, k2, k3 = (k.to(gt.device) for k in self.sample_kernels(gt.shape[0]))
            if self.config.shared_resize:
                out = self._degrade(gt, k1, k2, k3)
                if self.config.clean_prob > 0:
                    clean = torch.from_numpy(np.random.uniform(size=len(gt)) < self.config.clean_prob)
                    out = torch.where(clean.to(gt.device).view(-1, 1, 1, 1), self._clean(gt), out)
            else:
                # The reference degrades image by image, so each draws its own resize scale and mode.
                out = torch.cat(
                    [
                        self._clean(gt[i : i + 1])
                        if self.config.clean_prob > 0 and np.random.uniform() < self.config.clean_prob
                        else self._degrade(gt[i : i + 1], k1[i : i + 1], k2[i : i + 1], k3[i : i + 1])
                        for i in range(len(gt))
                    ]
                )
            return ((out * 255.0).round().clamp(0, 255) / 255.0).contiguous()
