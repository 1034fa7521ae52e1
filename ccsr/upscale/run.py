"""The folder run behind ``ccsr upscale``: check, plan, shard, upscale, write, record.

Order of work, and why:

0. **Check before torch.** Inputs exist, the model path exists, the output folder can be created and
   written (a probe file), no other run holds it (:mod:`ccsr.upscale.outdir`), file headers give every
   input's size and frames, and inputs whose output or canvas exceeds the limits are failed
   (:mod:`ccsr.upscale.limits`): all before torch is imported, let alone the model loaded.
1. **Plan without the model.** Name every output, refuse writes into input folders, hash the model
   files, and compare each planned output with ``manifest.jsonl``: done outputs are skipped, outputs
   made differently stop the run (unless ``overwrite``) before minutes go into loading a model.
2. **Shard.** Under ``accelerate launch`` each process takes every ``num_processes``-th input of the
   to-do list (all frames of a multi-frame input go to the same process). Noise comes from one CPU
   ``torch.Generator`` per (image, sample) seeded ``seed + k``, so an output does not depend on which
   process, or which neighbours, it ran with.
3. **Overlap I/O with compute.** Background threads decode the next images and encode / write
   finished ones through bounded queues; the model runs in the main thread, one image at a time.
4. **Record.** Each output is written atomically and listed in the manifest; at the end the main
   process writes ``run.json``, ``failures.jsonl`` and ``failures.txt`` per run folder and prints the
   summary. A folder that stops taking files (disk full, permissions) stops the run after the image
   in progress, with the summary and, if it can still be written, ``run.json`` (``"status": "stopped"``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccsr.upscale import derived
from ccsr.upscale.config import UpscaleConfig
from ccsr.upscale.device import init_state, load_pipeline, load_pipeline_on
from ccsr.upscale.discovery import InputError
from ccsr.upscale.jobs import Job, RunDir
from ccsr.upscale.limits import mp, output_pixels
from ccsr.upscale.loop import process
from ccsr.upscale.manifest import (
    FAILURES_JSONL,
    MANIFEST,
    RUN_JSON,
    ManifestWriter,
    compact_manifest,
)
from ccsr.upscale.outdir import acquire_lock, probe_writable, remove_created, remove_orphan_temps
from ccsr.upscale.plan import Scan, discover_inputs, input_dirs, plan_jobs, scan_inputs
from ccsr.upscale.runlog import (
    RunLog,
    Tally,
    environment,
    now_iso,
    rank_file,
    summary_line,
    write_records,
)

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

__all__ = [
    "EXIT_FAILURES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "launch_rank",
    "load_pipeline",
    "run_upscale",
]


def run_upscale(cfg: UpscaleConfig, pipe=None) -> int:
    """Run ``cfg``; returns the exit status (0 ok, 1 some inputs failed or the output folder stopped
    taking files, 2 refused, 130 interrupted).

    ``pipe``: a pipeline already loaded by :func:`load_pipeline` for the same model, device and
    precision (``ccsr app`` keeps one across runs); None loads it when there is work to do."""
    wall0 = time.perf_counter()
    started = now_iso()
    main = launch_rank() == 0
    lock = None
    created: list[Path] = []
    status = EXIT_USAGE
    try:  # every check that needs no model (nor torch) comes first
        found, runs = discover_inputs(cfg)
        for run in runs:
            created += probe_writable(run.dir)
        if main:
            lock = acquire_lock(Path(cfg.output), sys.argv, started)
        scan = scan_inputs(cfg, found, runs)
        if main:
            remove_orphan_temps([Path(cfg.output)], exclude=input_dirs(cfg))
        status = _run(cfg, scan, wall0, started, pipe)
        return status
    except InputError as e:
        if main:
            print(f"ccsr upscale: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if lock is not None:
            lock.release()
        if status == EXIT_USAGE and main:  # refused: an output folder this run created goes again
            remove_created(created)


def _run(cfg: UpscaleConfig, scan: Scan, wall0: float, started: str, pipe=None) -> int:
    """Steps 1 to 4 of the module's list, once torch is in: plan, shard, upscale, record."""
    try:
        state, device = init_state(cfg.device)
    except InputError as e:
        print(f"ccsr upscale: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    rank, world = state.process_index, state.num_processes
    log = RunLog(cfg.quiet, cfg.log_jsonl, rank)
    try:
        try:
            jobs, identity, dtype_name = plan_jobs(cfg, device, scan)
        except InputError as e:
            if rank == 0:
                print(f"ccsr upscale: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        share = Share.of(jobs, world, rank)
        if rank == 0:
            _announce(cfg, scan, share, world, log)
        state.wait_for_everyone()
        tally = _start_tally(scan, rank, log)
        load_s = _load_and_process(cfg, share.mine, pipe, device, dtype_name, log, tally)
        if load_s is None:
            return EXIT_USAGE
        log.close_bar()
        total = _gather(tally, state, Path(cfg.output))
        if rank != 0:
            return _exit_status(tally)
        base = {
            "ccsr_version": _version(),
            "command": sys.argv,
            "status": "interrupted" if total.interrupted else ("stopped" if total.stopped else "complete"),
            "started": started,
            "finished": now_iso(),
            "inputs": [str(p) for p in cfg.inputs],
            "model": {"source": cfg.model, "components": identity},
            "environment": environment(device, dtype_name, world),
            "timings": _timings(total, time.perf_counter() - wall0, load_s),
        }
        _finish(cfg, scan.runs, total, base, share.n_files + len(scan.failures), share.skipped_images, log)
        status = _exit_status(total)
        if cfg.report and not total.interrupted and not total.stopped:
            status = max(status, _report(cfg))
        return status
    finally:
        log.close()


@dataclass(frozen=True)
class Share:
    """The jobs with work left, and this process's share of them: all frames of an input go to one
    process (which puts them together), inputs are dealt out in turn."""

    todo: list[Job]
    mine: list[Job]
    owner: dict[Path, int]  # input -> the process that upscales it
    n_files: int  # inputs planned (skipped ones included)

    @classmethod
    def of(cls, jobs: list[Job], world: int, rank: int) -> Share:
        todo = [j for j in jobs if j.tasks]
        owner: dict[Path, int] = {}
        for j in todo:
            owner.setdefault(j.file.path, len(owner) % world)
        mine = [j for j in todo if owner[j.file.path] == rank]
        return cls(todo, mine, owner, len({j.file.path for j in jobs}))

    @property
    def skipped_images(self) -> int:
        return self.n_files - len(self.owner)


def _announce(cfg: UpscaleConfig, scan: Scan, share: Share, world: int, log: RunLog) -> None:
    """The main process's start event and lines: what is skipped, what is to do."""
    estimate = sum(output_pixels(s, cfg.scale) for p in share.owner for s in scan.sizes.get(p, ()))
    log.event(
        "start",
        inputs=share.n_files + len(scan.failures),
        to_do=len(share.todo),
        processes=world,
        output_megapixels=round(estimate / 1e6, 3),
    )
    if share.skipped_images:
        log.say(
            f"skipping {share.skipped_images} images whose outputs are done (settings match; --overwrite redoes them)"
        )
    for note in scan.notes:
        log.say(note)
    if share.todo:
        log.say(f"to do: {len(share.owner)} images, about {mp(estimate)} of output in all")


def _start_tally(scan: Scan, rank: int, log: RunLog) -> Tally:
    """Open each run folder's manifest; the main process's tally starts with the failures found before."""
    for run in scan.runs:
        run.writer = ManifestWriter(run.dir / MANIFEST)
    tally = Tally()
    if rank == 0:
        tally.failures += scan.failures
        for f in scan.failures:
            log.failure(f)
    return tally


def _load_and_process(
    cfg: UpscaleConfig, shard: list[Job], pipe, device, dtype_name: str, log: RunLog, tally: Tally
) -> float | None:
    """Upscale ``shard``, loading the pipeline first unless one is given (and there is work). Returns the
    seconds spent loading, or None when the model could not be loaded (the message is printed)."""
    if not shard:
        return 0.0
    load_s = 0.0
    if pipe is None:
        t = time.perf_counter()
        try:
            pipe = load_pipeline_on(cfg, device, dtype_name)
        except (OSError, ValueError, RuntimeError) as e:  # bad weights, wrong layout, device trouble
            print(f"ccsr upscale: error: could not load --model {cfg.model}: {e}", file=sys.stderr)
            return None
        load_s = time.perf_counter() - t
    process(shard, pipe, cfg, log, tally)
    return load_s


def _timings(total: Tally, wall: float, load_s: float) -> dict:
    """``run.json``'s ``"timings"``."""
    mean = sum(total.image_seconds) / len(total.image_seconds) if total.image_seconds else None
    return {
        "wall_s": round(wall, 3),
        "model_load_s": round(load_s, 3),
        "mean_image_s": None if mean is None else round(mean, 4),
        "loop_s": round(total.loop_seconds, 3),
        # throughput of the work loop (reading, model, writing), without start-up and model load
        "images_per_s": round(total.images_done / total.loop_seconds, 4) if total.loop_seconds else None,
        "peak_gpu_memory_gib": round(total.peak_gpu_bytes / 2**30, 3) if total.peak_gpu_bytes else None,
    }


def launch_rank() -> int:
    """This process's rank under ``accelerate launch`` / torchrun / MPI, read from the environment
    (before torch is imported); 0 for a plain run."""
    for var in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def _exit_status(t: Tally) -> int:
    return EXIT_INTERRUPTED if t.interrupted else (EXIT_FAILURES if t.failures or t.stopped else EXIT_OK)


def _finish(
    cfg: UpscaleConfig,
    runs: list[RunDir],
    total: Tally,
    base: dict,
    n_inputs: int,
    skipped_images: int,
    log: RunLog,
) -> None:
    """Records and summary of the main process; a folder that stopped taking files still gets the summary."""
    status = base["status"]
    load_s, wall = base["timings"]["model_load_s"], base["timings"]["wall_s"]
    if total.stopped:
        base["stop_reason"] = total.stopped
    unwritten = []
    for run in runs:
        try:
            compact_manifest(run.dir)
            write_records(
                run.dir,
                run.steps,
                {**base, "settings": run.resolved.as_dict(), "settings_hash": run.hash},
                total,
                run.skipped,
            )
        except OSError as e:
            unwritten.append(f"{run.dir / RUN_JSON} ({e.strerror or e})")
    per_image = derived.outputs_per_image(cfg) * len(cfg.steps)
    line = summary_line(total, skipped_images, n_inputs, wall, load_s, per_image)
    log.event(
        "summary",
        **base["timings"],
        done=total.images_done,
        skipped=skipped_images,
        failed=len({f.input for f in total.failures}),
        status=status,
    )
    if unwritten:
        print(f"ccsr upscale: error: could not write the run record {', '.join(unwritten)}", file=sys.stderr)
    if not cfg.quiet or total.stopped:
        print(line)
        if total.failures and not cfg.quiet:
            print(
                f"  failures listed in {', '.join(str(r.dir / FAILURES_JSONL) for r in runs)} (and failures.txt)"
            )


# ---------------------------------------------------------------------------------------------- end of run
def _gather(tally: Tally, state, out_root: Path) -> Tally:
    """Merge every process's tally into the main one (through small files: no collective ops on objects)."""
    import json

    if state.num_processes == 1:
        return tally
    mine = rank_file(out_root, state.process_index)
    mine.write_text(json.dumps(tally.to_json()))
    state.wait_for_everyone()
    if state.process_index != 0:
        return tally
    total = Tally()
    for r in range(state.num_processes):
        p = rank_file(out_root, r)
        total.merge(Tally.from_json(json.loads(p.read_text())))
        p.unlink()
    return total


def _report(cfg: UpscaleConfig) -> int:
    try:
        from ccsr.metrics.report import write_report
    except ImportError as e:
        print(
            f"ccsr upscale: error: --report needs ccsr.metrics.report, which cannot be imported here ({e}). "
            f"The upscaled images are complete in {cfg.output}; write the report later with `ccsr evaluate`.",
            file=sys.stderr,
        )
        return EXIT_FAILURES
    from ccsr.metrics.iqa import MetricUnavailable

    kwargs: dict[str, Any] = {} if cfg.report_metrics is None else {"metrics": tuple(cfg.report_metrics)}
    try:
        path = write_report(
            Path(cfg.output), gt_dir=None if cfg.report_gt is None else Path(cfg.report_gt), **kwargs
        )
    except (ValueError, MetricUnavailable, ImportError) as e:  # RunFolderError is a ValueError
        print(
            f"ccsr upscale: error: the report could not be written: {e}. The upscaled images are complete in "
            f"{cfg.output}; fix the cause and run `ccsr evaluate {cfg.output}`.",
            file=sys.stderr,
        )
        return EXIT_FAILURES
    if not cfg.quiet:
        print(f"  report: {path}")
    return EXIT_OK


def _version() -> str:
    from ccsr import __version__

    return __version__
