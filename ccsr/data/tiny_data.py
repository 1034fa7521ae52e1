"""Offline data for ccsr-tiny: photographs shipped inside scikit-image, split by file.

Nothing is downloaded: every image is a file of ``skimage/data/`` (scikit-image 0.19+ ships them in
the wheel; ``skimage.data.<name>()`` reads them without pooch). Only images whose scikit-image
docstring states public-domain / CC0 / "no known copyright restrictions" terms are used; the
licence of each is listed below. Images without stated terms (``moon``, ``page``, the Middlebury
``motorcycle`` pair), synthetic or graphic ones (``logo``, ``horse``, ``phantom``, ``chessboard``)
and images too small for a 256-px crop (``text``, ``microaneurysms``) are left out.

Split **by file**: no crop of a held-out photograph is ever seen in training.

* training: 5 colour + 5 grey photographs (grey ones are repeated over the three channels), each
  also written at 3/4 and 1/2 size, which adds scale variety and cleaner (downsampled) textures;
* held-out: ``chelsea`` (cat), ``coffee`` (cup) and ``camera`` (grey, photographer), cut into
  non-overlapping centred 256x256 GT crops (7 crops), from which two fixed evaluation sets are made:
  ``lr_bicubic`` (PIL bicubic x1/4, the classic SR benchmark) and ``lr_realesrgan`` (Real-ESRGAN
  second-order degradation with CCSR's parameters, one fixed seed per crop, 64x64 LR).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ccsr.atomic import atomic_path, write_text


@dataclass(frozen=True)
class SourceImage:
    """One photograph: ``skimage.data.<loader>()`` and its licence (from scikit-image's docstring)."""

    name: str
    loader: str
    licence: str


TRAIN_IMAGES: tuple[SourceImage, ...] = (
    SourceImage("astronaut", "astronaut", "public domain (NASA)"),
    SourceImage("hubble_deep_field", "hubble_deep_field", "public domain (NASA)"),
    SourceImage("ihc", "immunohistochemistry", "no known copyright restrictions (CMMI)"),
    SourceImage("retina", "retina", "CC0 1.0 (Mikael Häggström)"),
    SourceImage("rocket", "rocket", "public domain (SpaceX)"),
    SourceImage("cell", "cell", "CC0 (Paul Müller)"),
    SourceImage("brick", "brick", "CC0 (CC0Textures)"),
    SourceImage("grass", "grass", "CC0 (DeviantArt linolafett)"),
    SourceImage("gravel", "gravel", "CC0 (CC0Textures)"),
    SourceImage("coins", "coins", "no known copyright restrictions (Brooklyn Museum)"),
)

HELDOUT_IMAGES: tuple[SourceImage, ...] = (
    SourceImage("chelsea", "chelsea", "CC0 (Stefan van der Walt)"),
    SourceImage("coffee", "coffee", "CC0 (Rachel Michetti)"),
    SourceImage("camera", "camera", "CC0 (Lav Varshney)"),
)

#: Scales at which every training photograph is written (PIL bicubic with antialiasing).
TRAIN_SCALES: tuple[float, ...] = (1.0, 0.75, 0.5)
MAX_REPEATS = 6  # lines per training file in train.txt
EVAL_CROP = 256  # GT side of a held-out crop; x4 LR is 64x64
EVAL_SCALE = 4
EVAL_SEED = 2024  # Real-ESRGAN draw of crop i uses EVAL_SEED + i
EVAL_SETS = ("lr_bicubic", "lr_realesrgan")


def load_photo(source: SourceImage) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a shipped scikit-image photograph (grey repeated, alpha dropped)."""
    from skimage import data

    loader = getattr(data, source.loader, None)
    if loader is None:
        raise FileNotFoundError(
            f"skimage.data.{source.loader} does not exist in this scikit-image; ccsr-tiny's data needs "
            "scikit-image >= 0.19 (pip install 'scikit-image>=0.22')"
        )
    try:
        arr = np.asarray(loader())
    except Exception as e:  # pooch (download) errors when an image is not shipped in the wheel
        raise FileNotFoundError(
            f"skimage.data.{source.loader}() could not be read offline ({type(e).__name__}: {e}); "
            "ccsr-tiny uses only images shipped inside scikit-image"
        ) from e
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def _save_png(arr: np.ndarray, path: Path) -> None:
    """Write atomically: a crash never leaves a truncated PNG that looks complete."""
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic to ``size = (width, height)`` (antialiased when shrinking, as PIL always is)."""
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BICUBIC))


def write_training_set(folder: str | os.PathLike, min_side: int = 128) -> Path:
    """Write every training photograph at :data:`TRAIN_SCALES` as ``<name>_s<percent>.png`` and a list
    file ``train.txt`` (:func:`write_scaled_set`). Returns the list file."""
    return write_scaled_set({src.name: load_photo(src) for src in TRAIN_IMAGES}, folder, min_side)


def write_scaled_set(images: dict[str, np.ndarray], folder: str | os.PathLike, min_side: int = 128) -> Path:
    """Write every ``name -> (H, W, 3) uint8`` photograph at :data:`TRAIN_SCALES` as
    ``<name>_s<percent>.png`` and a list file ``train.txt`` that names each file once per 256x256 of its
    area, between 1 and :data:`MAX_REPEATS` times.

    The list is what training reads (:class:`ccsr.data.datasets.HQImageDataset` takes one random crop per
    line and epoch): larger photographs give more crops per epoch, but none dominates (the 1411 px
    retina would otherwise be a third of all crops). A scaled copy whose short side falls below
    ``min_side`` (the training crop) is skipped.
    Returns the list file; existing files are overwritten with identical content.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, int]] = []
    for name, arr in images.items():
        h, w = arr.shape[:2]
        for s in TRAIN_SCALES:
            size = (round(w * s), round(h * s))
            if min(size) < min_side:
                continue
            path = folder / f"{name}_s{round(s * 100):03d}.png"
            _save_png(arr if s == 1.0 else _resize(arr, size), path)
            written.append((path, min(MAX_REPEATS, max(1, round(size[0] * size[1] / 256**2)))))
    if not written:
        raise ValueError(f"no training image has a short side >= min_side={min_side}")
    lines = [path.name for path, repeats in sorted(written) for _ in range(repeats)]
    listing = folder / "train.txt"
    header = "# ccsr-tiny training crops: one line per crop per epoch (ccsr.data.tiny_data)\n"
    write_text(listing, header + "\n".join(lines) + "\n")
    return listing


def heldout_crops(size: int = EVAL_CROP) -> dict[str, np.ndarray]:
    """Non-overlapping ``size`` x ``size`` GT crops of the held-out photographs, centred as a grid.

    Keys are ``<name>_<row><col>``; values ``(size, size, 3)`` uint8. With 256: 7 crops.
    """
    crops: dict[str, np.ndarray] = {}
    for src in HELDOUT_IMAGES:
        crops.update(grid_crops(src.name, load_photo(src), size))
    return crops


def grid_crops(name: str, arr: np.ndarray, size: int = EVAL_CROP) -> dict[str, np.ndarray]:
    """Every non-overlapping ``size`` x ``size`` crop of ``arr`` on a centred grid, as ``<name>_<row><col>``."""
    h, w = arr.shape[:2]
    rows, cols = h // size, w // size
    if rows == 0 or cols == 0:
        raise ValueError(f"held-out image {name} is {w}x{h}, smaller than the {size} px crop")
    top0, left0 = (h - rows * size) // 2, (w - cols * size) // 2
    crops = {}
    for r in range(rows):
        for c in range(cols):
            top, left = top0 + r * size, left0 + c * size
            crops[f"{name}_{r}{c}"] = arr[top : top + size, left : left + size].copy()
    return crops


def bicubic_lr(gt: np.ndarray, scale: int = EVAL_SCALE) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(H/scale, W/scale, 3)`` uint8 by PIL bicubic (antialiased)."""
    h, w = gt.shape[:2]
    return _resize(gt, (w // scale, h // scale))


def realesrgan_lr(
    gts: dict[str, np.ndarray], seed: int = EVAL_SEED, scale: int = EVAL_SCALE
) -> dict[str, np.ndarray]:
    """Real-ESRGAN degradation (CCSR's parameters, no resize back) of each GT, crop ``i`` drawn with
    ``seed + i`` in sorted-name order, so a crop's LR never depends on the other crops."""
    import torch

    from ccsr.data.degradation import RealESRGANDegradation
    from ccsr.data.degradation_config import DegradationConfig

    degrade = RealESRGANDegradation(DegradationConfig(scale=scale, resize_back=False))
    out = {}
    for i, name in enumerate(sorted(gts)):
        x = torch.from_numpy(gts[name]).permute(2, 0, 1)[None].float() / 255.0
        lr = degrade(x, seed=seed + i)[0].permute(1, 2, 0).numpy()
        out[name] = (lr * 255.0).round().clip(0, 255).astype(np.uint8)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_eval_sets(
    folder: str | os.PathLike,
    size: int = EVAL_CROP,
    seed: int = EVAL_SEED,
    gts: dict[str, np.ndarray] | None = None,
    sources: dict[str, str] | None = None,
) -> Path:
    """Write ``gt/``, ``lr_bicubic/`` and ``lr_realesrgan/`` (same file names) and ``manifest.json``
    (sizes, seed, licences, SHA-256 of every file) under ``folder``. Returns ``folder``.

    ``gts`` (name -> ``(size, size, 3)`` uint8 crop) and ``sources`` (source image -> licence) default
    to the scikit-image held-out crops (:func:`heldout_crops`)."""
    folder = Path(folder)
    if gts is None:
        gts = heldout_crops(size)
        sources = {s.name: s.licence for s in HELDOUT_IMAGES}
    sets = {
        "gt": gts,
        "lr_bicubic": {k: bicubic_lr(v) for k, v in gts.items()},
        "lr_realesrgan": realesrgan_lr(gts, seed),
    }
    files: dict[str, dict[str, str]] = {}
    for sub, images in sets.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for name, arr in images.items():
            path = folder / sub / f"{name}.png"
            _save_png(arr, path)
            files.setdefault(sub, {})[path.name] = _sha256(path)
    manifest = {
        "crop": size,
        "scale": EVAL_SCALE,
        "realesrgan_seed": seed,
        "sources": sources or {},
        "files": files,
    }
    write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return folder


def licence_table() -> str:
    """Markdown table of every photograph used, its split and licence (for the README)."""
    rows = ["| image | split | licence |", "|---|---|---|"]
    rows += [f"| {s.name} | train | {s.licence} |" for s in TRAIN_IMAGES]
    rows += [f"| {s.name} | held-out | {s.licence} |" for s in HELDOUT_IMAGES]
    return "\n".join(rows)
