"""Debian packages as an offline image source: fetch (``apt-get download`` + ``dpkg-deb -x``), find
image files, and read each file's licence from the package's machine-readable ``debian/copyright``.

A package is used as an *extracted folder* ``ROOT/<package>/`` (the file tree ``dpkg-deb -x`` writes,
``usr/share/...``). :func:`extract_packages` makes those folders from ``.deb`` files, downloading
the ones that are missing with ``apt-get download`` (needs apt's package lists, no root).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _run(cmd: list[str], cwd: Path) -> None:
    if shutil.which(cmd[0]) is None:
        raise FileNotFoundError(
            f"{cmd[0]} is not installed; it is needed to fetch Debian packages. On a machine without apt, "
            "pass already-extracted package folders with --packages DIR (DIR/<package>/usr/share/...)"
        )
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def extract_packages(names: tuple[str, ...], folder: str | os.PathLike) -> Path:
    """Make ``folder/<name>/`` for every package: an extracted folder that exists is used as is; else the
    ``folder/<name>_*.deb`` is extracted, after ``apt-get download <name>`` when there is none.
    Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (folder / name).is_dir():
            continue
        debs = sorted(folder.glob(f"{name}_*.deb"))
        if not debs:
            _run(["apt-get", "download", name], folder)
            debs = sorted(folder.glob(f"{name}_*.deb"))
        if not debs:
            raise FileNotFoundError(f"apt-get download {name} wrote no {name}_*.deb into {folder}")
        tmp = folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)], folder)
        os.replace(tmp, folder / name)
    return folder


def package_version(root: Path, name: str) -> str:
    """The version in the ``.deb`` file name beside the extracted folder (``name_VERSION_arch.deb``), or
    ``"unknown"`` for a folder given without its ``.deb``."""
    debs = sorted(root.glob(f"{name}_*.deb"))
    if not debs:
        return "unknown"
    return debs[-1].name.split("_")[1].replace("%3a", ":")


def image_files(package_dir: Path) -> list[Path]:
    """Every image file under ``usr/share/`` of an extracted package, sorted, paths relative to it;
    preview thumbnails (``screenshot.*``) and documentation are skipped."""
    out = []
    for p in sorted((package_dir / "usr" / "share").rglob("*")):
        rel = p.relative_to(package_dir)
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if p.stem == "screenshot" or rel.parts[:3] == ("usr", "share", "doc"):
            continue
        out.append(rel)
    return out


def copyright_file(package_dir: Path, name: str) -> Path:
    return package_dir / "usr" / "share" / "doc" / name / "copyright"


def _stanzas(text: str) -> list[dict[str, str]]:
    """DEP-5 paragraphs as ``{field: value}`` (continuation lines joined with spaces)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                key = m.group(1).lower()
                fields[key] = m.group(2).strip()
            elif key is not None and line.startswith((" ", "\t")):
                fields[key] = (fields[key] + " " + line.strip()).strip()
        if fields:
            out.append(fields)
    return out


def licence_of(package_dir: Path, name: str, rel: Path) -> str:
    """The ``License:`` (and ``Copyright:``) of the last ``Files:`` paragraph of the package's
    machine-readable ``debian/copyright`` whose pattern matches the file's name or path (DEP-5: the
    last match wins). A copyright file that is not machine-readable is cited by path."""
    path = copyright_file(package_dir, name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: cannot tell the licence of {name}'s images")
    text = path.read_text(errors="replace")
    if not text.lstrip().startswith("Format:"):
        return f"not machine-readable: see /{path.relative_to(package_dir)} of {name}"
    found = None
    for st in _stanzas(text):
        patterns = st.get("files", "").split()
        if any(fnmatch.fnmatch(rel.name, p) or fnmatch.fnmatch(str(rel), p) for p in patterns):
            found = st
    if found is None or "license" not in found:
        return f"no Files: paragraph matches; see /{path.relative_to(package_dir)} of {name}"
    licence = found["license"].split(" ")[0]
    holder = found.get("copyright", "").strip()
    return f"{licence} ({holder})" if holder else licence
