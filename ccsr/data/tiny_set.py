"""ccsr-tiny's offline training set (``ccsr data tiny-set OUT_DIR``): photographs from Debian's wallpaper
packages and from the Python packages scikit-image, scikit-learn and matplotlib, nothing else.

**Which files are photographs.** Two tests, both recorded per file in the manifest:

1. a documented allow list (:data:`DEBIAN_PHOTOGRAPHS`): the wallpapers that are photographs of real
   scenes or natural textures, chosen by looking at every image of the five packages. Everything else
   is left out: digital paintings and renders (plasma's Autumn, MilkyWay, Volna, Flow, Kay ...), the
   abstract art and patterns of ``gnome-backgrounds``, ``ukui-wallpapers`` and ``lomiri-wallpapers``, and
   ``sway-backgrounds``' logo. The Python packages' photographs are listed in
   :data:`PYTHON_PHOTOGRAPHS` (the scikit-image ones are :mod:`ccsr.data.tiny_data`'s);
2. a measurable guard against synthetic images: the fraction of 8x8 luma blocks that are flat (std
   below 0.5 levels, at most 1024 px on the long side) must stay below :data:`MAX_FLAT_FRACTION`.
   A camera's noise and JPEG leave almost no perfectly flat block (the allowed wallpapers: 0.00-0.19);
   flat-shaded vector art has many (ukui 0.24-0.98, gnome's symbolic 0.51-0.55, plasma's Flow 0.37-0.75).

**Source images.** One per picture: the variants of a wallpaper (plasma's resolutions, gnome's
``-d``/``-l`` pairs) are one source image, read from its largest file. Every source image is shrunk
(PIL bicubic, antialiased) so that its short side is at most :data:`TRAIN_SHORT_SIDE`: wallpapers are
soft at full resolution, and a 64-px training crop of a 5-megapixel photograph is mostly blur.

**Split by source image, fixed by name** (:data:`HELDOUT`): the held-out photographs are scikit-image's
chelsea, coffee and camera (the previous ccsr-tiny benchmark, kept for continuity) and three wallpapers.
They are shrunk to a short side of :data:`EVAL_SHORT_SIDE` and cut into non-overlapping centred
256x256 GT crops (25 crops); their LR sets are made as :func:`ccsr.data.tiny_data.write_eval_sets`
makes them (PIL bicubic x4, and the Real-ESRGAN degradation with seed 2024 + i). No training crop
comes from a held-out photograph.

Layout of ``OUT_DIR``: ``train/`` (PNGs at 100 / 75 / 50 % and ``train.txt``, as
:func:`ccsr.data.tiny_data.write_scaled_set`), ``eval/`` (``gt/ lr_bicubic/ lr_realesrgan/
manifest.json``) and ``manifest.json`` (every file looked at: source package and version, path,
licence, SHA-256, flat fraction, and whether it went to train, held-out, or why it was dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ccsr.data import debian
from ccsr.data.tiny_data import EVAL_CROP, EVAL_SEED, grid_crops, write_eval_sets, write_scaled_set

DEBIAN_PACKAGES = (
    "plasma-workspace-wallpapers",
    "ukui-wallpapers",
    "gnome-backgrounds",
    "lomiri-wallpapers",
    "sway-backgrounds",
)
#: package -> source images that are photographs (plasma: the wallpaper's folder name).
DEBIAN_PHOTOGRAPHS: dict[str, tuple[str, ...]] = {
    "plasma-workspace-wallpapers": (
        "BytheWater",
        "ColdRipple",
        "ColorfulCups",
        "DarkestHour",
        "EveningGlow",
        "FallenLeaf",
        "Grey",
        "Kite",
        "OneStandsOut",
        "Path",
        "summer_1am",
    ),
}


@dataclass(frozen=True)
class PythonPhoto:
    """A photograph shipped inside a Python package: ``<package dir>/<path>``."""

    package: str  # import name
    path: str
    licence: str


def _skimage(name: str, licence: str) -> PythonPhoto:
    return PythonPhoto("skimage", f"data/{name}", licence)


_BY_FLICKR = "CC BY 2.0 (Flickr {}; sklearn/datasets/images/README.txt)"
PYTHON_PHOTOGRAPHS: tuple[PythonPhoto, ...] = (
    _skimage("astronaut.png", "public domain (NASA)"),
    _skimage("hubble_deep_field.jpg", "public domain (NASA)"),
    _skimage("ihc.png", "no known copyright restrictions (CMMI)"),
    _skimage("retina.jpg", "CC0 1.0 (Mikael Häggström)"),
    _skimage("rocket.jpg", "public domain (SpaceX)"),
    _skimage("cell.png", "CC0 (Paul Müller)"),
    _skimage("brick.png", "CC0 (CC0Textures)"),
    _skimage("grass.png", "CC0 (DeviantArt linolafett)"),
    _skimage("gravel.png", "CC0 (CC0Textures)"),
    _skimage("coins.png", "no known copyright restrictions (Brooklyn Museum)"),
    _skimage("chelsea.png", "CC0 (Stefan van der Walt)"),
    _skimage("coffee.png", "CC0 (Rachel Michetti)"),
    _skimage("camera.png", "CC0 (Lav Varshney)"),
    PythonPhoto("sklearn", "datasets/images/china.jpg", _BY_FLICKR.format("danielbuechele")),
    PythonPhoto("sklearn", "datasets/images/flower.jpg", _BY_FLICKR.format("vultilion")),
    PythonPhoto(
        "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "public domain (U.S. Navy photograph)"
    ),
)
#: Held-out source images (``<source>/<image>``), never cropped for training.
HELDOUT: tuple[str, ...] = (
    "skimage/chelsea",
    "skimage/coffee",
    "skimage/camera",
    "plasma-workspace-wallpapers/EveningGlow",
    "plasma-workspace-wallpapers/FallenLeaf",
    "plasma-workspace-wallpapers/Path",
)
MAX_FLAT_FRACTION = 0.25
TRAIN_SHORT_SIDE = 1024
EVAL_SHORT_SIDE = 512
MIN_HELDOUT_CROPS = 20


@dataclass
class Candidate:
    """One image file looked at; ``split`` is ``train``, ``heldout`` or ``dropped`` (``reason`` says why)."""

    source: str
    version: str
    path: str
    licence: str
    image: str  # source-image id: <source>/<name>
    file: Path
    sha256: str = ""
    size: tuple[int, int] = (0, 0)
    flat_fraction: float | None = None
    split: str = "dropped"
    reason: str = ""

    def record(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "file"}
        out["size"] = list(self.size)
        return out


def read_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8: grey repeated, alpha dropped (as :func:`ccsr.data.tiny_data.load_photo`)."""
    Image.MAX_IMAGE_PIXELS = None  # wallpapers are up to 5120x2880
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def flat_fraction(arr: np.ndarray) -> float:
    """Fraction of 8x8 blocks of the luma whose std is below 0.5 levels, on a copy at most 1024 px long."""
    im = Image.fromarray(arr)
    im.thumbnail((1024, 1024), Image.Resampling.BOX)
    y = np.asarray(im.convert("L"), dtype=np.float32)
    h, w = y.shape[0] // 8 * 8, y.shape[1] // 8 * 8
    if h == 0 or w == 0:
        return 1.0
    blocks = y[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 64)
    return float((blocks.std(axis=1) < 0.5).mean())


def shrink(arr: np.ndarray, short_side: int) -> np.ndarray:
    """PIL bicubic (antialiased) to a short side of at most ``short_side``; never enlarges."""
    h, w = arr.shape[:2]
    if min(h, w) <= short_side:
        return arr
    s = short_side / min(h, w)
    return np.asarray(Image.fromarray(arr).resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC))


def debian_image_name(package: str, rel: Path) -> str:
    """The source image a package file shows: plasma's wallpaper folder, else the file name without
    gnome's ``-d``/``-l`` variant or sway's ``_WxH[_Portrait]`` suffix."""
    if package == "plasma-workspace-wallpapers" and len(rel.parts) > 3:
        return rel.parts[3]
    return re.sub(r"(-[dl]|_\d+x\d+(_Portrait)?)$", "", rel.stem)


def debian_candidates(root: Path, packages: tuple[str, ...] = DEBIAN_PACKAGES) -> list[Candidate]:
    out = []
    for name in packages:
        pkg = root / name
        version = debian.package_version(root, name)
        for rel in debian.image_files(pkg):
            image = f"{name}/{debian_image_name(name, rel)}"
            licence = debian.licence_of(pkg, name, rel)
            out.append(Candidate(name, version, "/" + str(rel), licence, image, pkg / rel))
    return out


def python_candidates(photos: tuple[PythonPhoto, ...] = PYTHON_PHOTOGRAPHS) -> list[Candidate]:
    import importlib
    from importlib.metadata import version

    out = []
    for p in photos:
        dist = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(p.package, p.package)
        try:
            mod = importlib.import_module(p.package)
        except ImportError as e:
            raise FileNotFoundError(
                f"{dist} is not installed; its photographs are part of the tiny set (pip install {dist})"
            ) from e
        assert mod.__file__ is not None, f"{p.package} is a namespace package: it has no folder"
        file = Path(mod.__file__).parent / p.path
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing from this {dist} {version(dist)}")
        image = f"{p.package}/{Path(p.path).stem}"
        out.append(Candidate(dist, version(dist), f"{p.package}/{p.path}", p.licence, image, file))
    return out


def classify(cands: list[Candidate], heldout: tuple[str, ...] = HELDOUT) -> dict[str, np.ndarray]:
    """Fill in sha256 / size / flat fraction / split of every candidate; returns ``image -> array`` of
    the chosen file of every kept source image (the largest of its files, first path on a tie)."""
    allowed = {f"{pkg}/{n}" for pkg, names in DEBIAN_PHOTOGRAPHS.items() for n in names}
    allowed |= {c.image for c in cands if c.source not in DEBIAN_PACKAGES}
    seen: dict[str, str] = {}
    best: dict[str, Candidate] = {}
    for c in cands:
        c.sha256 = hashlib.sha256(c.file.read_bytes()).hexdigest()
        if c.sha256 in seen:
            c.reason = f"same bytes as {seen[c.sha256]}"
            continue
        seen[c.sha256] = f"{c.source}:{c.path}"
        if c.image not in allowed:
            c.reason = "not on the photograph list (abstract art, render or logo)"
            continue
        with Image.open(c.file) as im:
            c.size = im.size
        if c.image not in best or c.size[0] * c.size[1] > best[c.image].size[0] * best[c.image].size[1]:
            best[c.image] = c
    arrays = {}
    for image, c in best.items():
        arr = read_rgb(c.file)
        c.flat_fraction = round(flat_fraction(arr), 4)
        if c.flat_fraction >= MAX_FLAT_FRACTION:
            c.reason = f"flat fraction {c.flat_fraction} >= {MAX_FLAT_FRACTION} (synthetic flat areas)"
            continue
        c.split = "heldout" if image in heldout else "train"
        arrays[image] = arr
    for c in cands:
        if c.split == "dropped" and not c.reason:
            c.reason = f"a larger file of {c.image} is used"
    return arrays


def build_tiny_set(
    out: str | os.PathLike,
    packages: str | os.PathLike,
    *,
    debian_packages: tuple[str, ...] = DEBIAN_PACKAGES,
    python_photos: tuple[PythonPhoto, ...] = PYTHON_PHOTOGRAPHS,
    heldout: tuple[str, ...] = HELDOUT,
    min_heldout_crops: int = MIN_HELDOUT_CROPS,
    min_side: int = 64,
    seed: int = EVAL_SEED,
) -> dict:
    """Build the set in ``out`` (which must not exist; written beside it and renamed into place).
    ``packages``: folder of extracted Debian packages (``<name>/usr/share/...``); missing ones are
    fetched into it with ``apt-get download``. Returns the manifest."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new OUT_DIR or delete it first")
    root = debian.extract_packages(debian_packages, packages)
    cands = debian_candidates(root, debian_packages) + python_candidates(python_photos)
    arrays = classify(cands, heldout)
    missing = [h for h in heldout if h not in arrays]
    if missing:
        raise ValueError(
            f"held-out source images {missing} were not found or not kept; see the manifest rules"
        )
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = {image: image.split("/")[-1] for image in arrays}
    if len(set(names.values())) != len(names):
        raise ValueError(f"two kept source images share a file name: {sorted(names.values())}")
    train = {names[i]: shrink(a, TRAIN_SHORT_SIDE) for i, a in arrays.items() if i not in heldout}
    listing = write_scaled_set(train, tmp / "train", min_side)
    gts: dict[str, np.ndarray] = {}
    for image in heldout:
        gts.update(grid_crops(names[image], shrink(arrays[image], EVAL_SHORT_SIDE), EVAL_CROP))
    if len(gts) < min_heldout_crops:
        raise ValueError(f"only {len(gts)} held-out crops; at least {min_heldout_crops} are required")
    licences = {names[c.image]: c.licence for c in cands if c.split == "heldout"}
    write_eval_sets(tmp / "eval", EVAL_CROP, seed, gts=gts, sources=licences)
    manifest = {
        "command": "ccsr data tiny-set",
        "packages": {c.source: c.version for c in cands},
        "rules": {
            "debian_photographs": DEBIAN_PHOTOGRAPHS,
            "max_flat_fraction": MAX_FLAT_FRACTION,
            "train_short_side": TRAIN_SHORT_SIDE,
            "eval_short_side": EVAL_SHORT_SIDE,
            "heldout": list(heldout),
        },
        "train_files": len({x for x in listing.read_text().splitlines() if not x.startswith("#")}),
        "train_source_images": sorted(train),
        "heldout_crops": sorted(gts),
        "files": [c.record() for c in cands],
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out)
    return manifest
