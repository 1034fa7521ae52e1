"""The output folder of a folder run: can it be written, who is running in it, whose temp files are left.

* :func:`probe_writable` creates the folder and writes and removes a small file before any work, so
  a read-only disk, a missing permission or a file in the way is one clear line with exit status 2,
  not a traceback after the model has loaded.
* :func:`acquire_lock` makes one run per output folder: ``OUTPUT_DIR/.ccsr-lock`` holds the pid, host,
  start time and command of the run, and the run holds an ``flock`` on it for its whole life. The OS
  drops that lock when the process ends in any way (kill -9 included), so a lock file left by a dead
  run is simply taken over; a live one makes the second run stop at once naming the first. Under
  ``accelerate launch`` the main process (rank 0) takes the lock for the whole launch: the other
  processes of that launch only start work after it has (they wait for it at the first barrier).
* :func:`remove_orphan_temps` deletes only temporary files whose owner process is gone.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ccsr.atomic import is_temp_file, temp_owner
from ccsr.upscale.discovery import InputError

LOCK_NAME = ".ccsr-lock"


def probe_writable(folder: Path) -> list[Path]:
    """Create ``folder`` and write, sync and remove a probe file in it; :class:`InputError` if impossible.
    Returns the folders it created (the topmost new one), for :func:`remove_created` on a refusal."""
    probe = folder / f".ccsr-probe-{os.getpid()}"
    top = None
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        top = p
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ccsr write probe\n")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
        return [] if top is None else [top]
    except OSError as e:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
        raise InputError(
            f"OUTPUT_DIR {folder} cannot be written ({e.strerror or e}): nothing was run. "
            "Choose a folder on a writable disk, or fix its permissions"
        ) from None


def remove_created(folders: Iterable[Path]) -> None:
    """Remove folders :func:`probe_writable` created, where they are still empty: a refused run leaves
    no trace."""
    for top in folders:
        for here, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(here)
            except OSError:
                pass


@dataclass
class RunLock:
    """The held lock of one run; :meth:`release` at the end of the run."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # a lock file we cannot remove is taken over by the next run
        os.close(self.fd)  # drops the flock
        self.fd = -1


def acquire_lock(folder: Path, command: list[str], started: str) -> RunLock:
    """Take ``folder``'s run lock, or raise :class:`InputError` naming the run that holds it."""
    path = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "command": command}
    for _ in range(20):  # a lock file replaced under us repeatedly is a folder other runs keep using
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(
                f"OUTPUT_DIR {folder}: cannot create its lock file {path} ({e.strerror})"
            ) from None
        if not _try_lock(fd, path):
            holder = _read_json(fd)
            os.close(fd)
            raise InputError(_busy_message(folder, holder, path))
        if not _same_file(fd, path):  # the holder finished and removed the file just now: start over
            os.close(fd)
            continue
        os.ftruncate(fd, 0)  # a dead run's record, if any, is replaced
        os.pwrite(fd, (json.dumps(me, ensure_ascii=True) + "\n").encode("ascii"), 0)
        os.fsync(fd)
        return RunLock(path, fd)
    raise InputError(
        f"OUTPUT_DIR {folder}: its lock file {path} keeps changing; another run is starting there"
    )


def _try_lock(fd: int, path: Path) -> bool:
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except (ImportError, OSError):  # no flock here (Windows, some network file systems): the recorded pid
        holder = _read_json(fd)
        return not (holder.get("host") == socket.gethostname() and pid_alive(holder.get("pid")))
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_json(fd: int) -> dict:
    try:
        rec = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _busy_message(folder: Path, holder: dict, path: Path) -> str:
    who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
    return (
        f"OUTPUT_DIR {folder} is in use by another ccsr upscale run ({who}; see {path}). "
        "Wait for it to finish (then run this command again to do what is left), or choose another OUTPUT_DIR"
    )


def pid_alive(pid: object) -> bool:
    """True when process ``pid`` exists on this machine (a pid we may not signal still exists)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphan_temps(roots: Iterable[Path], exclude: Iterable[Path] = ()) -> int:
    """Delete temporary files (:func:`ccsr.atomic.temp_name`) whose owner process is gone, or is this one
    (left by an earlier run in this process), never descending into ``exclude`` (input folders below
    the output folder). A temp file of a live process is left alone. Returns how many were removed."""
    skip = {Path(p).resolve() for p in exclude}
    n = 0
    for root in roots:
        if not root.is_dir():
            continue
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if Path(folder, d).resolve() not in skip]
            for name in names:
                if not is_temp_file(name):
                    continue
                owner = temp_owner(name)
                if owner is not None and owner != os.getpid() and pid_alive(owner):
                    continue
                Path(folder, name).unlink(missing_ok=True)
                n += 1
    return n
