"""Training and validation images. CPU-only work (decode, crop, flip), so DataLoader workers can run it.

* :class:`HQImageDataset`: high-quality images from folders and/or list files, any format PIL reads.
  Files that cannot be opened, or are smaller than the crop, are reported once (one warning with the
  count and a few names) and skipped. Crops and flips are a pure function of ``(seed, epoch, index)``,
  so they do not depend on the worker count and replay exactly after a resume.
* :class:`PairedImageDataset`: LR / HR folders matched by file stem, for validation.

Items are dicts of float tensors ``(3, H, W)`` in ``[0, 1]``: ``{"gt": ...}`` and, paired, ``{"lq": ..., "gt": ...}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ccsr.data.augment import recolor, smooth_patch
from ccsr.io import ImageReadError, read_image

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
_HEADER_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def list_image_files(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively, by extension) and list files (one path per line, ``#`` comments,
    relative paths taken from the list file's folder). Order: as given, folders sorted."""
    files: list[Path] = []
    for src in sources:
        path = Path(src).expanduser()
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
        elif path.is_file():
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line).expanduser()
                    files.append(p if p.is_absolute() else path.parent / p)
        else:
            raise FileNotFoundError(f"training data source {path} is neither a folder nor a list file")
    return files


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image with :func:`ccsr.io.read_image` (EXIF rotation, ICC to sRGB, 16-bit kept) to
    ``(H, W, 3)`` float32 in ``[0, 1]``; grey is repeated to 3 channels, alpha dropped.
    Raises :class:`ccsr.io.ImageReadError` naming the reason."""
    color = read_image(path).color
    arr = color.astype(np.float32) / (65535.0 if color.dtype == np.uint16 else 255.0)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class HQImageDataset(Dataset):
    """Random ``resolution`` crops (and horizontal flips) of high-quality images: ``{"gt": (3, R, R)}``.

    The crop of item ``i`` depends on ``(seed, epoch, i)`` only. The epoch is ``set_epoch``'s, or the
    index's when the index is ``epoch * len(self) + i`` (what the training loop's sampler passes, so
    that DataLoader workers can persist across epochs).
    """

    EPOCH_IN_INDEX = True

    def __init__(
        self,
        sources: Sequence[str | os.PathLike],
        resolution: int,
        seed: int = 0,
        flip: bool = True,
        cache_mb: int = 0,
        recolor_prob: float = 0.0,
        smooth_prob: float = 0.0,
    ) -> None:
        """``cache_mb``: decoded images kept in memory (per DataLoader worker) up to this many MiB, so
        that small crops of a few images do not decode the same file at every step; 0: none.
        ``recolor_prob`` / ``smooth_prob``: the share of items recoloured (:func:`ccsr.data.augment.recolor`)
        or replaced by a synthetic flat or ramp crop (:func:`ccsr.data.augment.smooth_patch`)."""
        self.resolution, self.seed, self.flip, self.epoch = resolution, seed, flip, 0
        self.recolor_prob, self.smooth_prob = recolor_prob, smooth_prob
        self.cache_bytes = max(0, cache_mb) * 2**20
        self._cache: dict[int, np.ndarray] = {}
        self._cached = 0
        candidates = list_image_files(sources)
        self.files: list[Path] = []
        skipped: list[str] = []
        for path in candidates:
            # Header only: cheap, and catches non-images, empty files and images smaller than a crop.
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except _HEADER_ERRORS as e:
                skipped.append(f"{path} ({type(e).__name__})")
                continue
            if min(w, h) < resolution:
                skipped.append(f"{path} ({w}x{h} < {resolution})")
                continue
            self.files.append(path)
        self.skipped = skipped
        if skipped:
            logger.warning(
                "skipped %d of %d training files (unreadable or smaller than the %d px crop), e.g. %s",
                len(skipped),
                len(candidates),
                resolution,
                "; ".join(skipped[:5]),
            )
        if not self.files:
            raise ValueError(
                f"no usable training image in {[str(s) for s in sources]} ({len(candidates)} found, "
                f"{len(skipped)} skipped): need readable images of at least {resolution} px"
            )
        self._failed: set[int] = set()

    @classmethod
    def from_config(cls, data, seed: int) -> HQImageDataset:
        """The training images of a stage's ``data`` config (``train``, ``resolution``, ``cache_mb``)."""
        return cls(
            data.train,
            data.resolution,
            seed=seed,
            cache_mb=data.cache_mb,
            # Only the from-scratch stages' ImageDataConfig has these; stages 1 and 2 do not augment.
            recolor_prob=getattr(data, "recolor_prob", 0.0),
            smooth_prob=getattr(data, "smooth_prob", 0.0),
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(index, len(self.files)) if index >= len(self.files) else (self.epoch, index)
        rng = np.random.default_rng((self.seed, epoch, index))
        # A body that fails to decode (truncated file) is reported once and replaced by the next image.
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            if i in self._cache:
                img = self._cache[i]
                break
            try:
                img = read_rgb(self.files[i])
                if self._cached + img.nbytes <= self.cache_bytes:
                    self._cache[i] = img
                    self._cached += img.nbytes
                break
            except ImageReadError as e:
                if i not in self._failed:
                    self._failed.add(i)
                    logger.warning(
                        "cannot decode %s (%s); using another image in its place", self.files[i], e
                    )
        else:
            raise RuntimeError(f"none of the {len(self.files)} training images could be decoded")
        r = self.resolution
        top = int(rng.integers(0, img.shape[0] - r + 1))
        left = int(rng.integers(0, img.shape[1] - r + 1))
        crop = img[top : top + r, left : left + r]
        if self.flip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        return {"gt": _to_tensor(self._augment(crop, rng))}

    def _augment(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The crop recoloured or replaced by a smooth patch, as ``recolor_prob`` / ``smooth_prob`` say
        (no draw at all when both are 0, so crops without augmentation stay as they were)."""
        if self.smooth_prob > 0 and rng.random() < self.smooth_prob:
            return smooth_patch(self.resolution, rng)
        if self.recolor_prob > 0 and rng.random() < self.recolor_prob:
            return recolor(crop, rng)
        return crop


class PairedImageDataset(Dataset):
    """LR / HR validation pairs matched by file stem, centre-cropped to ``crop`` (HR pixels) so they batch.

    Returns ``{"lq": (3, crop / s, crop / s), "gt": (3, crop, crop)}`` in ``[0, 1]``, where the scale
    ``s`` = HR size / LR size must be the same integer for both axes.
    """

    def __init__(self, lr_dir: str | os.PathLike, hr_dir: str | os.PathLike, crop: int | None = None) -> None:
        lr = {p.stem: p for p in list_image_files([lr_dir])}
        hr = {p.stem: p for p in list_image_files([hr_dir])}
        only_lr, only_hr = sorted(set(lr) - set(hr)), sorted(set(hr) - set(lr))
        if only_lr or only_hr:
            raise ValueError(
                f"validation folders {lr_dir} and {hr_dir} must hold the same file stems; "
                f"only in LR: {only_lr[:5]}, only in HR: {only_hr[:5]}"
            )
        if not lr:
            raise ValueError(f"no images in validation folder {lr_dir}")
        self.pairs = [(lr[k], hr[k]) for k in sorted(lr)]
        self.crop = crop

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        lr_path, hr_path = self.pairs[index]
        lq, gt = read_rgb(lr_path), read_rgb(hr_path)
        sy, sx = gt.shape[0] / lq.shape[0], gt.shape[1] / lq.shape[1]
        if sy != sx or not sy.is_integer():
            raise ValueError(
                f"{hr_path} is {gt.shape[1]}x{gt.shape[0]} but {lr_path} is {lq.shape[1]}x{lq.shape[0]}: "
                "HR must be an integer multiple of LR, the same on both axes"
            )
        s = int(sy)
        if self.crop is not None:
            c = self.crop - self.crop % s
            if min(gt.shape[:2]) < c:
                raise ValueError(
                    f"{hr_path} is {gt.shape[1]}x{gt.shape[0]}, smaller than the {c} px validation crop"
                )
            top, left = (gt.shape[0] - c) // 2 // s, (gt.shape[1] - c) // 2 // s
            lq = lq[top : top + c // s, left : left + c // s]
            gt = gt[top * s : top * s + c, left * s : left * s + c]
        return {"lq": _to_tensor(lq), "gt": _to_tensor(gt)}
