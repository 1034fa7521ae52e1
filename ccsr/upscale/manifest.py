"""The run record of a folder run: settings hash, ``manifest.jsonl`` and model identity.

``manifest.jsonl`` holds one JSON line per finished output (the run-folder contract)::

    {"input": "sub/a.jpg", "output": "sample01/sub/a.png", "sample": 1, "seed": 1, "settings": "3f2a...",
     "input_bytes": ..., "input_mtime_ns": ..., "input_sha256": ..., "output_bytes": ...,
     "output_mtime_ns": ..., "output_sha256": ..., "seconds": ..., "finished": "2026-..."}

A line is appended *before* its output is renamed into place, so every output on disk has a line;
a line whose output is missing (the process died between the two) only means "redo it". Readers
take the last line per output and ignore a torn last line; :func:`compact_manifest` rewrites the file
to exactly one line per existing output at the end of each run.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ccsr.atomic import write_text

MANIFEST = "manifest.jsonl"
RUN_JSON = "run.json"
FAILURES = "failures.txt"
FAILURES_JSONL = "failures.jsonl"


def settings_hash(settings: dict) -> str:
    """Short stable hash of a JSON-serialisable settings dict (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def component_files(folder: Path) -> list[Path]:
    """The files of a model component that decide its outputs: configs, tokenizer files and the
    weights that diffusers / transformers load (safetensors first; fp16 'variant' files are not loaded
    by default and are left out)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    small = [p for p in files if p.suffix in (".json", ".txt", ".model")]
    weights = [p for p in files if p.suffix == ".safetensors" and ".fp16." not in p.name]
    if not weights:
        weights = [p for p in files if p.suffix == ".bin" and ".fp16." not in p.name]
    return small + weights


def model_identity(paths: dict[str, str]) -> dict[str, dict]:
    """``{component: {"path": folder, "sha256": combined, "files": {name: sha256}}}``."""
    out: dict[str, dict] = {}
    for name, folder in sorted(paths.items()):
        files = {p.name: file_sha256(p) for p in component_files(Path(folder))}
        combined = hashlib.sha256(
            "".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()
        ).hexdigest()
        out[name] = {"path": str(folder), "sha256": combined, "files": files}
    return out


def read_manifest(path: Path) -> dict[str, dict]:
    """``{output rel path: last entry}``; lines that are not JSON objects (a torn last line) are skipped."""
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("output"), str):
            entries[rec["output"]] = rec
    return entries


class ManifestWriter:
    """Appends lines to ``manifest.jsonl``; safe across threads and processes (one ``write`` on an
    ``O_APPEND`` descriptor per line, under ``flock`` where the OS has it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, entry: dict) -> None:
        line = (json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                _flock(fd, True)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                _flock(fd, False)
                os.close(fd)


def _flock(fd: int, lock: bool) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: O_APPEND alone
        return
    fcntl.flock(fd, fcntl.LOCK_EX if lock else fcntl.LOCK_UN)


@dataclass(frozen=True)
class Expected:
    """What an existing output must have been made from to be kept."""

    settings: str
    seed: int
    input_bytes: int
    input_mtime_ns: int


def output_status(run_dir: Path, out_rel: str, entry: dict | None, want: Expected) -> tuple[str, str]:
    """``("missing" | "done" | "conflict", reason)`` for one planned output."""
    out = run_dir / out_rel
    if not out.exists():
        return "missing", ""
    if entry is None:
        return (
            "conflict",
            f"{MANIFEST} has no record of it (not made by this tool, or by an older run that was cut off)",
        )
    if entry.get("settings") != want.settings:
        return "conflict", f"made with settings {entry.get('settings')}, this run uses {want.settings}"
    if entry.get("seed") != want.seed:
        return "conflict", f"made with seed {entry.get('seed')}, this run uses seed {want.seed}"
    if (entry.get("input_bytes"), entry.get("input_mtime_ns")) != (want.input_bytes, want.input_mtime_ns):
        return "conflict", "its input file changed since it was made"
    st = out.stat()
    if st.st_size != entry.get("output_bytes"):
        return "conflict", "the file differs from the one recorded (size)"
    if st.st_mtime_ns != entry.get("output_mtime_ns") and file_sha256(out) != entry.get("output_sha256"):
        return "conflict", "the file differs from the one recorded (content)"
    return "done", ""


def compact_manifest(run_dir: Path) -> int:
    """Rewrite ``manifest.jsonl`` with one line per output that exists and matches its record.

    Only call when no process is writing. Returns the number of lines kept."""
    path = run_dir / MANIFEST
    if not path.is_file():
        return 0
    kept = []
    for rel, rec in sorted(read_manifest(path).items()):
        out = run_dir / rel
        if out.is_file() and out.stat().st_size == rec.get("output_bytes"):
            kept.append(json.dumps(rec, sort_keys=True, ensure_ascii=True))
    write_text(path, "".join(line + "\n" for line in kept))
    return len(kept)


def settings_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two settings dicts, e.g. ``["steps: 1 -> 2"]``."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += settings_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return diffs


def _short(v: object) -> str:
    s = json.dumps(v)
    return s if len(s) <= 40 else s[:37] + "..."
