"""What a folder run tells its user and its scripts: progress bar, per-image lines, JSON-lines events,
the final summary, and the ``run.json`` / ``failures.jsonl`` / ``failures.txt`` records.

File names may hold any byte but ``/`` and NUL: newlines, tabs, quotes, bytes that are not UTF-8.
``failures.jsonl`` (one JSON object per line, ASCII-only) round-trips every one of them;
``failures.txt`` stays one line per failure for people and ``grep`` by escaping them (:func:`escape`).
"""

from __future__ import annotations

import base64
import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ccsr.atomic import write_text
from ccsr.upscale.manifest import FAILURES, FAILURES_JSONL, RUN_JSON

_PACKAGES = (
    "ccsr",
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "safetensors",
    "numpy",
    "pillow",
    "opencv-python-headless",
    "opencv-python",
)


@dataclass
class Failure:
    input: str
    reason: str
    steps: int | None = None  # None: the input itself failed (every step count of a sweep)

    def line(self) -> str:
        """``failures.txt``'s line: ``<input>\\t<reason>``, both escaped (:func:`escape`)."""
        return f"{escape(self.input)}\t{escape(self.reason)}"

    def record(self) -> dict:
        """``failures.jsonl``'s object; ``input_b64`` holds the exact bytes of a name that is not UTF-8."""
        rec: dict = {"input": self.input, "reason": self.reason, "steps": self.steps}
        raw = os.fsencode(self.input)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            rec["input_b64"] = base64.b64encode(raw).decode("ascii")
        return rec


def escape(text: str) -> str:
    """One printable line for any file name: ``\\`` -> ``\\\\``, tab -> ``\\t``, newline -> ``\\n``,
    CR -> ``\\r``, other control characters and bytes that are not UTF-8 -> ``\\xNN``."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\t\n\r":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8 (Python's surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass
class Tally:
    """What one process did; merged across processes by the main one."""

    images_done: int = 0
    outputs: dict[int, int] = field(default_factory=dict)  # steps -> outputs written
    image_seconds: list[float] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    stopped: str = ""  # why the run stopped early: the output folder stopped taking files
    not_started: int = 0
    loop_seconds: float = 0.0  # first read to last write; processes run side by side, so merged by max
    peak_gpu_bytes: int = 0

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["failures"] = [f.__dict__ for f in self.failures]
        d["outputs"] = {str(k): v for k, v in self.outputs.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> Tally:
        t = cls(**{**d, "failures": [Failure(**f) for f in d["failures"]]})
        t.outputs = {int(k): v for k, v in d["outputs"].items()}
        return t

    def merge(self, other: Tally) -> None:
        self.images_done += other.images_done
        for k, v in other.outputs.items():
            self.outputs[k] = self.outputs.get(k, 0) + v
        self.image_seconds += other.image_seconds
        self.failures += other.failures
        self.notes += [n for n in other.notes if n not in self.notes]
        self.interrupted |= other.interrupted
        self.stopped = self.stopped or other.stopped
        self.not_started += other.not_started
        self.loop_seconds = max(self.loop_seconds, other.loop_seconds)
        self.peak_gpu_bytes = max(self.peak_gpu_bytes, other.peak_gpu_bytes)


class RunLog:
    """Console and JSON-lines output of one process. Only the main process draws the bar and prints
    per-image lines; failures are printed by every process (they are rare and must not be lost)."""

    def __init__(self, quiet: bool, jsonl: str | None, rank: int) -> None:
        self.quiet = quiet
        self.main = rank == 0
        self.rank = rank
        self._jsonl = None
        self._lock = threading.Lock()
        self._bar = None
        if jsonl:
            path = Path(jsonl)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(path, "a", encoding="utf-8")

    # -- events ------------------------------------------------------------------------------
    def event(self, kind: str, **fields: object) -> None:
        if self._jsonl is None:
            return
        rec = {"event": kind, "time": round(time.time(), 3), "rank": self.rank, **fields}
        with self._lock:
            self._jsonl.write(json.dumps(rec, ensure_ascii=True, default=str) + "\n")
            self._jsonl.flush()

    def say(self, msg: str) -> None:
        """An informational line (main process, not quiet)."""
        if self.quiet or not self.main:
            return
        self._write(msg)

    def _write(self, msg: str) -> None:
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def failure(self, f: Failure) -> None:
        where = "" if f.steps is None else f" (steps {f.steps})"
        self._write(f"FAILED {escape(f.input)}{where}: {escape(f.reason)}")
        self.event("failed", input=f.input, reason=f.reason, steps=f.steps)

    # -- progress ------------------------------------------------------------------------------
    def start_bar(self, total: int) -> None:
        if self.quiet or not self.main or total == 0:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def image_done(self, rel: str, seconds: float, outputs: int) -> None:
        self.event("image", input=rel, seconds=round(seconds, 4), outputs=outputs)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{seconds:.2f} s/img", refresh=False)
            self._write(f"{escape(rel)}  {seconds:.2f} s")
            self._bar.update(1)

    def tile(self, rel: str, done: int, total: int) -> None:
        """Progress inside one image: ``done`` of ``total`` tile evaluations (tiled images only)."""
        self.event("tile", input=rel, done=done, total=total)
        if self._bar is not None:
            self._bar.set_postfix_str(f"{escape(rel)}: tile {done}/{total}", refresh=True)

    def image_failed(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.close_bar()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def summary_line(
    total: Tally, skipped: int, inputs: int, wall_s: float, load_s: float, per_image: int
) -> str:
    done, failed = total.images_done, len({f.input for f in total.failures})
    secs = total.image_seconds
    rate = f"{sum(secs) / len(secs):.2f} s per image" if secs else "no image processed"
    head = "interrupted" if total.interrupted else ("stopped" if total.stopped else "finished")
    text = (
        f"ccsr upscale {head}: {inputs} inputs: {done} done, {skipped} skipped (already done), {failed} failed "
        f"in {wall_s:.1f} s ({rate}, {per_image} output{'s' if per_image != 1 else ''} each; model load {load_s:.1f} s)"
    )
    if total.stopped:
        text += (
            f"; stopped after the image in progress because {total.stopped}; {total.not_started} not started: "
            "free space or fix the folder's permissions, then run the same command again to resume"
        )
    elif total.interrupted:
        text += f"; {total.not_started} not started: run the same command again to resume"
    return text


def environment(device: object, dtype: str, processes: int) -> dict:
    from importlib import metadata

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    dev = str(device)
    try:
        import torch

        if getattr(device, "type", "") == "cuda":
            dev += f" ({torch.cuda.get_device_name(dev)})"
    except Exception:  # the name is decoration; never fail a run record on it
        pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "device": dev,
        "dtype": dtype,
        "processes": processes,
        "cpu_threads": _torch_threads(),
    }


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:  # pragma: no cover
        return None


def write_records(
    run_dir: Path,
    steps: int,
    base: dict,
    total: Tally,
    skipped_outputs: int,
) -> None:
    """``run.json``, ``failures.jsonl`` and ``failures.txt`` of one run folder (a sweep has one per step
    count)."""
    fails = [f for f in total.failures if f.steps in (None, steps)]
    rec = dict(base)
    rec["counts"] = {
        "outputs_written": total.outputs.get(steps, 0),
        "outputs_skipped": skipped_outputs,
        "failed_inputs": len({f.input for f in fails}),
    }
    rec["failures"] = [f.record() for f in fails]
    rec["notes"] = total.notes
    old = read_run_json(run_dir)
    history = dict(old.get("settings_history", {})) if old else {}
    if old and "settings_hash" in old:
        history[old["settings_hash"]] = old.get("settings")
    history[rec["settings_hash"]] = rec["settings"]
    rec["settings_history"] = history
    write_text(run_dir / RUN_JSON, json.dumps(rec, indent=2, ensure_ascii=True, default=str) + "\n")
    write_text(run_dir / FAILURES_JSONL, "".join(json.dumps(f.record()) + "\n" for f in fails))
    write_text(run_dir / FAILURES, "".join(f.line() + "\n" for f in fails))


def read_run_json(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def rank_file(out_root: Path, rank: int) -> Path:
    return out_root / f".ccsr-rank{rank}-{os.environ.get('MASTER_PORT', 'local')}.json"
