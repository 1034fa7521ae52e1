"""Writing files and folders so that a crash never leaves half of one: the one home of temp-file-then-rename.

A temporary file is named ``.<name>.ccsr-tmp-<pid>-<thread>`` beside its target, so a later run can tell
whether its owner is gone (:func:`temp_owner`) and remove it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

#: Marker in temporary file names, so stale ones from a killed run can be found and removed.
TEMP_TAG = ".ccsr-tmp-"


def temp_name(name: str) -> str:
    """``.<name>.ccsr-tmp-<pid>-<thread>``: the owner's pid tells a later run whether it is gone. A long
    name is shortened to a hash, so the temporary name stays within the file system's 255 bytes."""
    if len(os.fsencode(name)) > 120:
        name = hashlib.sha256(os.fsencode(name)).hexdigest()[:32]
    return f".{name}{TEMP_TAG}{os.getpid()}-{threading.get_ident()}"


def is_temp_file(name: str) -> bool:
    """True for the temporary files this module creates."""
    return name.startswith(".") and TEMP_TAG in name


def temp_owner(name: str) -> int | None:
    """The pid of the process that created temporary file ``name`` (None if not one of ours)."""
    if not is_temp_file(name):
        return None
    pid = name.rsplit(TEMP_TAG, 1)[1].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write (with any library's own ``save``); it is
    renamed over ``path`` when the block succeeds and removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(
    path: Path, data: bytes, before_rename: Callable[[os.stat_result], None] | None = None
) -> os.stat_result:
    """Write ``data`` to ``path`` through a temporary file in the same folder (flushed to disk), then rename.

    ``before_rename(stat)`` runs after the bytes are on disk and before the rename, with the ``stat``
    the final file will have (a rename keeps size and mtime): the folder run records the output in its
    manifest there, so an output on disk is always in the manifest. Returns that ``stat``.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        st = os.stat(tmp)
        if before_rename is not None:
            before_rename(st)
    return st


def write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8; returns ``path``."""
    atomic_write(Path(path), text.encode("utf-8"))
    return Path(path)


def replace_dir_atomically(target: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Export a folder: ``write(tmp)`` fills a hidden sibling, which then takes ``target``'s place.

    A crash while writing leaves the previous ``target`` intact (or none), never a half-written one.
    """
    target = Path(target)
    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)
    return target
