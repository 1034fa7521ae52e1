"""Which files a folder run reads, what it names their outputs, and where it may not write.

Rules (each tested in ``tests/test_upscale.py``):

* INPUT may be a file (read whatever its extension) or a folder (files with an image extension,
  hidden files skipped; sub-folders only with ``recursive``, mirrored in the output).
* The output of ``<input folder>/<rel>`` is ``<run dir>/<rel with the output extension>``; two inputs
  that would share an output name are a failure of the later one (sorted order), never an overwrite.
* Nothing inside an input folder is written: OUTPUT equal to an input folder is refused, an OUTPUT
  inside an input folder is allowed and left out of the scan, and a planned output path that falls
  inside an input folder (OUTPUT above it) or onto an input file is refused before anything runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ccsr.io import IMAGE_EXTENSIONS


class InputError(ValueError):
    """A problem with the command's paths that stops the run before any work (exit status 2)."""


@dataclass(frozen=True)
class InputFile:
    path: Path  # absolute path of the file
    rel: str  # POSIX path relative to its input folder (its name for a file INPUT), original suffix

    def output_rel(self, ext: str) -> str:
        return str(PurePosixPath(self.rel).with_suffix(ext))


@dataclass
class Discovery:
    files: list[InputFile]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (input path, reason)
    ignored_subfolders: int = 0
    input_dirs: list[Path] = field(default_factory=list)  # resolved
    input_files: set[Path] = field(default_factory=set)  # resolved


def _inside(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def discover(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, recursive: bool) -> Discovery:
    """Scan ``inputs`` (files or folders) for images; see the module docstring for the rules."""
    out = Path(output).resolve()
    found: list[InputFile] = []
    result = Discovery([])
    for raw in inputs:
        given = Path(raw)
        if given.is_symlink() and not given.exists():
            result.failures.append((str(given), "broken symbolic link"))
            continue
        if not given.exists():
            raise InputError(f"input {given} does not exist")
        root = given.resolve()
        if root.is_file():
            found.append(InputFile(root, root.name))
            continue
        if not root.is_dir():
            raise InputError(f"input {given} is neither a file nor a folder")
        if out == root:
            raise InputError(
                f"OUTPUT_DIR {output} is the input folder {given}: outputs would be written among the inputs. "
                f"Choose another folder, e.g. {Path(given) / 'upscaled'}"
            )
        result.input_dirs.append(root)
        found += _scan_folder(root, out, recursive, result)
    seen: set[Path] = set()
    for f in found:
        if f.path not in seen:  # the same file named twice (as a file and inside a folder) runs once
            seen.add(f.path)
            result.files.append(f)
    result.input_files = {f.path.resolve() for f in result.files}
    return result


def _scan_folder(root: Path, out: Path, recursive: bool, result: Discovery) -> list[InputFile]:
    """The images in folder ``root`` (its sub-folders too when ``recursive``, never the output folder's);
    counts the sub-folders left out and records broken links in ``result``."""
    found = []
    out_below = _inside(out, root)  # then the output folder's subtree is not input
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        keep = []
        for d in sorted(dirs):
            sub = here / d
            if d.startswith(".") or (out_below and _inside(sub.resolve(), out)) or sub.is_symlink():
                continue  # hidden, our own output folder, or a link that could loop
            keep.append(d)
        if not recursive:
            result.ignored_subfolders += len(keep)
            keep = []
        dirs[:] = keep
        for name in sorted(names):
            p = here / name
            if name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if p.is_symlink() and not p.exists():
                result.failures.append((str(p), "broken symbolic link"))
                continue
            found.append(InputFile(p, p.relative_to(root).as_posix()))
    return found


def assign_outputs(
    files: list[InputFile], ext: str | Callable[[InputFile], str]
) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Drop inputs whose output name is taken by an earlier one; returns (kept, failures). ``ext`` is
    the output extension, or a function giving it per input (multi-frame inputs get their own)."""
    owner: dict[str, InputFile] = {}
    kept, failures = [], []
    for f in sorted(files, key=lambda f: (f.rel, str(f.path))):
        key = f.output_rel(ext if isinstance(ext, str) else ext(f))
        if key in owner:
            failures.append(
                (
                    str(f.path),
                    f"its output name {key} is already that of {owner[key].path}; rename one of them",
                )
            )
            continue
        owner[key] = f
        kept.append(f)
    return kept, failures


def check_writable(paths: Iterable[Path], output: Path, found: Discovery) -> None:
    """Refuse a run that would write ``paths`` inside an input folder or onto an input file."""
    out = output.resolve()
    # An OUTPUT inside an input folder is the user's explicit choice and is left out of the scan;
    # every other part of an input folder is off limits.
    guarded = [d for d in found.input_dirs if not (out != d and _inside(out, d))]
    for p in paths:
        rp = p.resolve()
        if rp in found.input_files:
            raise InputError(
                f"output {p} would overwrite the input file of the same name; choose another OUTPUT_DIR"
            )
        for d in guarded:
            if _inside(rp, d):
                raise InputError(
                    f"output {p} would be written inside the input folder {d}; choose an OUTPUT_DIR outside it"
                )
