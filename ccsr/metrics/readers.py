"""Reading run folders for evaluation: our layout, the reference's published layout, ground-truth pairing.

Layouts accepted (the run-folder contract shared with ``ccsr upscale``):

* ``single``: ``RUN/<rel>.png`` (one sample; ``run.json``, ``manifest.jsonl``, ``failures.txt`` may sit beside).
* ``sample00``: ``RUN/sample00/<rel>.png ... RUN/sample{K-1:02d}/<rel>.png`` (ours with ``--samples K``, and
  CCSR-v2's published results).
* ``sample0``: ``RUN/sample0 ... RUN/sample9`` (CCSR-v1's ``cal_iqa`` scripts).
* a sweep: ``RUN/steps{S}/`` sub-runs, each one of the above (see :func:`find_sweep`).

Every problem is an error naming the files: unequal sample folders, files that differ in size across
samples or from their ground truth, outputs listed in ``manifest.jsonl`` but missing, unpaired ground
truth. Nothing is skipped (the reference skips mismatched images yet divides by the full count).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
#: Folder our reports write their images into; never read back as outputs.
REPORT_ASSETS = "report_files"
PairBy = Literal["name", "order"]
_SAMPLE_RE = re.compile(r"^sample(\d+)$")
_STEPS_RE = re.compile(r"^steps(\d+)$")


class RunFolderError(ValueError):
    """A run or ground-truth folder that cannot be evaluated as it is; the message names the files."""


def _show(items: Iterable[object], limit: int = 6) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def list_images(folder: Path, skip_dirs: Iterable[str] = ()) -> list[str]:
    """Image files under ``folder`` (recursive), as sorted POSIX paths relative to it.

    Hidden entries and top-level folders named in ``skip_dirs`` are left out.
    """
    skip = set(skip_dirs)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not (rel_dir == Path(".") and d in skip)
        )
        for f in filenames:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                found.append((rel_dir / f).as_posix())
    return sorted(found)


def find_sweep(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(steps, folder), ...]`` for the ``steps{S}/`` sub-runs of a sweep, sorted by S; ``[]`` if none."""
    root = Path(run_dir)
    runs = []
    for d in root.iterdir() if root.is_dir() else ():
        m = _STEPS_RE.match(d.name)
        if m and d.is_dir():
            runs.append((int(m.group(1)), d))
    steps = [s for s, _ in runs]
    dup = sorted({s for s in steps if steps.count(s) > 1})
    if dup:
        raise RunFolderError(
            f"{root} has several folders for steps {dup} (e.g. steps1 and steps01); keep one each"
        )
    return sorted(runs)


def _sample_dirs(root: Path) -> tuple[str, list[Path]]:
    """Find ``sample*`` folders; return the layout name and the folders ordered by sample index."""
    found: dict[int, list[Path]] = {}
    for d in root.iterdir():
        m = _SAMPLE_RE.match(d.name)
        if m and d.is_dir():
            found.setdefault(int(m.group(1)), []).append(d)
    if not found:
        return "single", [root]
    clash = {k: v for k, v in found.items() if len(v) > 1}
    if clash:
        raise RunFolderError(
            f"{root}: several folders for the same sample: {_show(p.name for v in clash.values() for p in v)}"
        )
    k_all = sorted(found)
    missing = sorted(set(range(k_all[-1] + 1)) - set(k_all))
    if missing:
        raise RunFolderError(
            f"{root}: sample folders must be numbered 0..{k_all[-1]} without gaps; missing sample(s) {_show(missing)}"
        )
    dirs = [found[k][0] for k in k_all]
    padded = {d.name == f"sample{k:02d}" for k, d in enumerate(dirs) if k < 10}
    if len(padded) > 1:
        raise RunFolderError(
            f"{root}: mixes sample00-style and sample0-style folder names: {_show(d.name for d in dirs)}"
        )
    return ("sample00" if padded == {True} else "sample0"), dirs


def _check_manifest(root: Path, sample_dirs: list[Path]) -> None:
    """Every output listed in ``manifest.jsonl`` must exist (relative to the run, or to its sample folder).

    ``ccsr upscale`` appends a line just before renaming its output into place, so a listed but missing
    output means the run was cut off; a torn (non-JSON) last line is ignored for the same reason.
    """
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        return
    lines = manifest.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out = rec["output"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            if n == len(lines) and isinstance(e, json.JSONDecodeError):
                continue  # torn last line of an interrupted run
            raise RunFolderError(
                f"{manifest} line {n} is not a JSON object with an 'output' key: {e}"
            ) from None
        sample = rec.get("sample", 0)
        candidates = [root / out]
        if isinstance(sample, int) and 0 <= sample < len(sample_dirs):
            candidates.append(sample_dirs[sample] / out)
        if not any(c.is_file() for c in candidates):
            raise RunFolderError(
                f"{manifest} line {n} lists output {out!r} (sample {sample}) but {candidates[0]} does not exist: "
                f"the run did not finish; rerun the same `ccsr upscale` command to complete it"
            )


def _uncertainty_maps(root: Path) -> set[str]:
    """Heat maps ``ccsr upscale --uncertainty-map`` wrote beside the outputs (their manifest lines say
    ``"kind": "uncertainty_map"``): pictures about the outputs, not outputs."""
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        return set()
    maps = set()
    for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(rec, dict)
            and rec.get("kind") == "uncertainty_map"
            and isinstance(rec.get("output"), str)
        ):
            maps.add(rec["output"])
    return maps


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An 8-bit image file as a uint8 ``(3, H, W)`` RGB tensor (grey and palette images become RGB; alpha is
    dropped). 16-bit and float files are refused rather than silently truncated."""
    with Image.open(path) as im:
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F") or im.mode.startswith("I;16"):
            raise RunFolderError(
                f"{path} is a {im.mode} (16-bit or float) image; the metrics read 8-bit images only"
            )
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except OSError as e:
        raise RunFolderError(f"cannot read image {path}: {e}") from None


@dataclass(frozen=True)
class RunFolder:
    """One run's outputs: ``num_samples`` folders holding the same ``names``; optional paired ground truth."""

    root: Path
    layout: str  # "single", "sample00" or "sample0"
    sample_dirs: tuple[Path, ...]
    names: tuple[str, ...]  # POSIX paths relative to each sample folder, sorted
    sizes: tuple[tuple[int, int], ...]  # (width, height) of each image, equal across samples
    gt_files: tuple[Path, ...] | None = None  # paired with ``names``
    failures: tuple[str, ...] = field(default=())  # lines of the run's failures.txt (inputs with no output)

    @property
    def num_samples(self) -> int:
        return len(self.sample_dirs)

    @property
    def num_images(self) -> int:
        return len(self.names)

    def sample_file(self, k: int, i: int) -> Path:
        return self.sample_dirs[k] / self.names[i]

    def sample_files(self, k: int) -> list[Path]:
        return [self.sample_dirs[k] / n for n in self.names]

    def load_samples(self, i: int) -> torch.Tensor:
        """uint8 ``(S, 3, H, W)``: every sample of image ``i``."""
        return torch.stack([read_image(self.sample_file(k, i)) for k in range(self.num_samples)])

    def load_gt(self, i: int) -> torch.Tensor:
        """uint8 ``(3, H, W)``: the ground truth of image ``i``."""
        if self.gt_files is None:
            raise RunFolderError("no ground-truth folder was given (--gt)")
        return read_image(self.gt_files[i])


def _pair_gt(
    names: list[str], sizes: list[tuple[int, int]], sample0: Path, gt_dir: Path, pair_by: PairBy
) -> list[Path]:
    gt_names = list_images(gt_dir)
    if not gt_names:
        raise RunFolderError(
            f"ground-truth folder {gt_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    if pair_by == "order":
        if len(gt_names) != len(names):
            raise RunFolderError(
                f"--pair-by order needs as many ground-truth images as outputs: {gt_dir} has {len(gt_names)}, "
                f"the run has {len(names)}"
            )
        paired = [gt_dir / g for g in gt_names]
    elif pair_by == "name":
        paired = _pair_by_name(names, gt_names, gt_dir)
    else:
        raise ValueError(f"pair_by={pair_by!r} must be 'name' or 'order'")
    for name, size, gt in zip(names, sizes, paired):
        gsize = _image_size(gt)
        if gsize != size:
            raise RunFolderError(
                f"output {sample0 / name} is {size[0]}x{size[1]} but ground truth {gt} is {gsize[0]}x{gsize[1]}"
            )
    return paired


def _pair_by_name(names: list[str], gt_names: list[str], gt_dir: Path) -> list[Path]:
    """The ground truth of each output: the image of ``gt_dir`` with the same stem (extension ignored)."""
    by_stem: dict[str, str] = {}
    for g in gt_names:
        stem = g.rsplit(".", 1)[0]
        if stem in by_stem:
            raise RunFolderError(f"{gt_dir} holds two images named {stem}: {by_stem[stem]} and {g}")
        by_stem[stem] = g
    stems = [n.rsplit(".", 1)[0] for n in names]
    unmatched = [n for n, s in zip(names, stems) if s not in by_stem]
    extra = sorted(set(by_stem) - set(stems))
    if unmatched or extra:
        msg = [f"outputs and ground truth in {gt_dir} do not pair by name (extension ignored)."]
        if unmatched:
            msg.append(f"Outputs with no ground truth: {_show(unmatched)}.")
        if extra:
            msg.append(f"Ground truth with no output: {_show(by_stem[s] for s in extra)}.")
        msg.append(
            "If the names differ only by a suffix (e.g. _LR4 / _HR), use --pair-by order (sorted order, as the reference)."
        )
        raise RunFolderError(" ".join(msg))
    return [gt_dir / by_stem[s] for s in stems]


def open_run(
    run_dir: str | os.PathLike, gt_dir: str | os.PathLike | None = None, pair_by: PairBy = "name"
) -> RunFolder:
    """Read and check one run folder (not a sweep; see :func:`find_sweep`).

    Raises:
        RunFolderError: naming the files, for a missing/empty folder, a sweep, unequal sample folders,
            sizes that differ across samples or from the ground truth, missing manifest outputs, unpaired
            ground truth.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise RunFolderError(f"run folder {root} does not exist")
    if find_sweep(root):
        raise RunFolderError(
            f"{root} is a step sweep (steps*/ folders); evaluate it as a sweep or pick one steps*/ folder"
        )
    layout, dirs = _sample_dirs(root)
    per_sample = _images_per_sample(root, layout, dirs)
    names = per_sample[0]
    _check_same_images(root, dirs, per_sample)
    _check_manifest(root, dirs)
    sizes = _sample_sizes(dirs, names)
    gt_files = None
    if gt_dir is not None:
        gt = Path(gt_dir)
        if not gt.is_dir():
            raise RunFolderError(f"ground-truth folder {gt} does not exist")
        gt_files = tuple(_pair_gt(names, sizes, dirs[0], gt, pair_by))
    return RunFolder(root, layout, tuple(dirs), tuple(names), tuple(sizes), gt_files, _failures(root))


def _images_per_sample(root: Path, layout: str, dirs: list[Path]) -> list[list[str]]:
    """The output images of each sample folder (the run folder itself for a single sample, without its
    uncertainty maps); refuses loose images beside sample folders."""
    maps = _uncertainty_maps(root)
    per_sample = []
    for d in dirs:
        skip = [REPORT_ASSETS] if d == root else []
        per_sample.append([n for n in list_images(d, skip_dirs=skip) if d != root or n not in maps])
    if layout != "single":
        loose = [
            n for n in list_images(root, skip_dirs=[REPORT_ASSETS, *(d.name for d in dirs)]) if n not in maps
        ]
        if loose:
            raise RunFolderError(
                f"{root} holds sample folders and also loose images outside them: {_show(loose)}"
            )
    return per_sample


def _check_same_images(root: Path, dirs: list[Path], per_sample: list[list[str]]) -> None:
    if not any(per_sample):
        raise RunFolderError(f"{root} holds no output images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    union = sorted(set().union(*per_sample))
    problems = [
        f"{d.name}/ lacks {_show(sorted(set(union) - set(p)))}"
        for d, p in zip(dirs, per_sample)
        if len(p) != len(union)
    ]
    if problems:
        raise RunFolderError(
            f"{root}: the sample folders do not hold the same images ({len(union)} names in all): "
            + "; ".join(problems)
        )


def _sample_sizes(dirs: list[Path], names: list[str]) -> list[tuple[int, int]]:
    """``(width, height)`` of each image, the same in every sample folder."""
    sizes = []
    for name in names:
        s = [_image_size(d / name) for d in dirs]
        if len(set(s)) > 1:
            detail = ", ".join(f"{d / name} is {w}x{h}" for d, (w, h) in zip(dirs, s))
            raise RunFolderError(f"samples of {name} differ in size: {detail}")
        sizes.append(s[0])
    return sizes


def _failures(root: Path) -> tuple[str, ...]:
    """The lines of the run's ``failures.txt`` (inputs ``ccsr upscale`` could not process), if any."""
    failures_txt = root / "failures.txt"
    if not failures_txt.is_file():
        return ()
    return tuple(ln for ln in failures_txt.read_text(encoding="utf-8").splitlines() if ln.strip())


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in ``[0, 1]`` (``/ 255``, as the reference's ``cv2.imread(...) / 255``)."""
    return images.to(torch.float32) / 255.0
