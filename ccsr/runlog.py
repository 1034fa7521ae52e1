"""What a folder run tells its user and its scripts: progress bar, per-image lines, JSON-lines events,
the final summary, and the ``run.json`` / ``failures.txt`` records."""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ccsr.manifest import FAILURES, RUN_JSON, write_text_atomic

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
        return f"{self.input}\t{self.reason}"


@dataclass
class Tally:
    """What one process did; merged across processes by the main one."""

    images_done: int = 0
    outputs: dict[int, int] = field(default_factory=dict)  # steps -> outputs written
    image_seconds: list[float] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
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
            self._jsonl.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
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
        self._write(f"FAILED {f.input}{where}: {f.reason}")
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
            self._write(f"{rel}  {seconds:.2f} s")
            self._bar.update(1)

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
    head = "interrupted" if total.interrupted else "finished"
    text = (
        f"ccsr upscale {head}: {inputs} inputs: {done} done, {skipped} skipped (already done), {failed} failed "
        f"in {wall_s:.1f} s ({rate}, {per_image} output{'s' if per_image != 1 else ''} each; model load {load_s:.1f} s)"
    )
    if total.interrupted:
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
            dev += f" ({torch.cuda.get_device_name(device)})"
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
    """``run.json`` and ``failures.txt`` of one run folder (a sweep has one per step count)."""
    fails = [f for f in total.failures if f.steps in (None, steps)]
    rec = dict(base)
    rec["counts"] = {
        "outputs_written": total.outputs.get(steps, 0),
        "outputs_skipped": skipped_outputs,
        "failed_inputs": len({f.input for f in fails}),
    }
    rec["failures"] = [{"input": f.input, "reason": f.reason} for f in fails]
    rec["notes"] = total.notes
    old = read_run_json(run_dir)
    history = dict(old.get("settings_history", {})) if old else {}
    if old and "settings_hash" in old:
        history[old["settings_hash"]] = old.get("settings")
    history[rec["settings_hash"]] = rec["settings"]
    rec["settings_history"] = history
    write_text_atomic(run_dir / RUN_JSON, json.dumps(rec, indent=2, ensure_ascii=False, default=str) + "\n")
    write_text_atomic(run_dir / FAILURES, "".join(f.line() + "\n" for f in fails))


def read_run_json(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def rank_file(out_root: Path, rank: int) -> Path:
    return out_root / f".ccsr-rank{rank}-{os.environ.get('MASTER_PORT', 'local')}.json"
