"""Planning a folder run (steps 0 and 1 of :mod:`ccsr.upscale.run`): which inputs, which outputs, which of
them are done, and every check that needs no model, before the model is loaded."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ccsr.image import ResizePlan
from ccsr.io import IMAGE_EXTENSIONS, OUTPUT_FORMATS
from ccsr.models.shipped import resolve_model_root
from ccsr.upscale import derived
from ccsr.upscale.config import UpscaleConfig
from ccsr.upscale.discovery import Discovery, InputError, InputFile, assign_outputs, check_writable, discover
from ccsr.upscale.frames import container_ext, frame_rel
from ccsr.upscale.jobs import Job, RunDir, Task
from ccsr.upscale.limits import Header, plan_size, read_header
from ccsr.upscale.manifest import (
    FAILURES,
    FAILURES_JSONL,
    MANIFEST,
    RUN_JSON,
    Expected,
    model_identity,
    output_status,
    read_manifest,
    settings_diff,
)
from ccsr.upscale.runlog import Failure, read_run_json
from ccsr.upscale.settings import resolve_settings


@dataclass
class Scan:
    """What a run can know before torch or the model: inputs, their output names and sizes, run folders."""

    files: list[InputFile]
    failures: list[Failure]
    notes: list[str]
    runs: list[RunDir]
    sizes: dict[Path, tuple[tuple[int, int], ...]] = field(default_factory=dict)  # from the headers
    headers: dict[Path, Header | None] = field(default_factory=dict)  # multi-frame inputs only
    ext: dict[Path, str] = field(default_factory=dict)  # output extension per input
    plans: dict[Path, tuple[ResizePlan | None, ...]] = field(default_factory=dict)  # resize plan per frame


def discover_inputs(cfg: UpscaleConfig) -> tuple[Discovery, list[RunDir]]:
    """Inputs and run folders, from paths alone (fast: no file is opened)."""
    found = discover(cfg.inputs, cfg.output, cfg.recursive)
    if not found.files and not found.failures:
        raise InputError(
            f"no images found in {', '.join(map(str, cfg.inputs))} (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
            + ("; sub-folders need --recursive)" if found.ignored_subfolders else ")")
        )
    _check_model_path(cfg.model)
    out_root = Path(cfg.output)
    multi = len(cfg.steps) > 1
    return found, [RunDir(s, out_root / f"steps{s}" if multi else out_root) for s in cfg.steps]


def scan_inputs(cfg: UpscaleConfig, found: Discovery, runs: list[RunDir]) -> Scan:
    """Headers (sizes, frames), output names, overlap with inputs, size limits: all before torch."""
    headers = {f.path: read_header(f.path) for f in found.files}
    frames = "first" if derived.active(cfg) else cfg.frames  # samples of one frame are compared

    def ext_for(f: InputFile) -> str:
        return (
            container_ext(headers[f.path], cfg.output_format, frames) or OUTPUT_FORMATS[cfg.output_format][0]
        )

    files, collisions = assign_outputs(found.files, ext_for)
    notes = []
    if found.ignored_subfolders:
        notes.append(
            f"note: {found.ignored_subfolders} sub-folders not scanned (pass --recursive to include them)"
        )
    check_writable(_planned_outputs(cfg, runs, files, ext_for), Path(cfg.output), found)
    scan = Scan([], [Failure(p, r) for p, r in found.failures + collisions], notes, runs)
    for f in files:
        scan.ext[f.path] = ext_for(f)
        header = headers[f.path]
        why = None if header is None else _check_sizes(cfg, scan, f.path, header, frames)
        if why:
            scan.failures.append(Failure(str(f.path), why))
        else:
            scan.files.append(f)
    return scan


def _planned_outputs(
    cfg: UpscaleConfig, runs: list[RunDir], files: list[InputFile], ext_for: Callable[[InputFile], str]
) -> list[Path]:
    """Every file the run may write (records and outputs), for the write checks before any work."""
    planned = [r.dir / name for r in runs for name in (RUN_JSON, MANIFEST, FAILURES, FAILURES_JSONL)]
    return planned + [
        r.dir / rel
        for r in runs
        for f in files
        for rel in derived.output_rels(
            cfg, f.output_rel(ext_for(f)), functools.partial(_rel_for, cfg, f, ext=ext_for(f))
        )
    ]


def _check_sizes(cfg: UpscaleConfig, scan: Scan, path: Path, header: Header, frames: str) -> str | None:
    """Record the sizes, resize plans and frames of one input from its header; why it may not run, or None."""
    multi = container_ext(header, cfg.output_format, frames) is not None
    scan.sizes[path] = header.sizes if multi else header.sizes[:1]
    scan.headers[path] = header if multi else None
    checked = [
        plan_size(size, cfg.scale, cfg.process_size, cfg.max_pixels, cfg.max_output_pixels)
        for size in scan.sizes[path]
    ]
    scan.plans[path] = tuple(plan for plan, _ in checked)
    return next((why for _, why in checked if why), None)


def _check_model_path(model: str) -> None:
    """A --model that is clearly a local path (not a Hub repo id) must exist."""
    if model == "tiny":
        return
    p = Path(model).expanduser()
    if (p.is_absolute() or model.startswith((".", "~"))) and not p.exists():
        raise InputError(f"--model {model}: the folder does not exist")


def _rel_for(cfg: UpscaleConfig, f: InputFile, k: int, ext: str) -> str:
    """The output path of sample ``k`` of ``f`` (``sampleKK/`` when there are several samples)."""
    return (f"sample{k:02d}/" if cfg.samples > 1 else "") + f.output_rel(ext)


def plan_jobs(cfg: UpscaleConfig, device, scan: Scan) -> tuple[list[Job], dict, str]:
    """Resolve each run folder's settings once (:class:`~ccsr.upscale.settings.RunSettings`), then list
    the outputs still to make, one job per input (per frame of a multi-frame input). Returns the jobs,
    the model's identity and the precision. Outputs made differently stop the run unless ``overwrite``."""
    recommended, identity = _resolve_model(cfg)
    dtype_name = cfg.resolved_precision(device.type)
    model = {k: v["sha256"] for k, v in identity.items()}
    for run in scan.runs:
        run.settings = resolve_settings(cfg, run.steps, model, dtype_name, recommended)
    planner = _Planner(cfg, {r.dir: read_manifest(r.dir / MANIFEST) for r in scan.runs})
    jobs = [job for f in scan.files for job in planner.jobs(f, scan)]
    if planner.conflicts:
        raise InputError(_conflict_message(planner.conflicts))
    return jobs, identity, dtype_name


def _resolve_model(cfg: UpscaleConfig) -> tuple[dict, dict]:
    """The model folder's recommended settings and its identity (the hashes of its files); a model that
    cannot be used, or a --select distance that cannot run here, is refused before any work."""
    from ccsr.models.loading import check_base_matches, recommended_settings, resolve_paths

    try:
        root = resolve_model_root(cfg.model)
        paths = resolve_paths(root, cfg.base, cfg.controlnet, cfg.vae)
        check_base_matches(paths)
        recommended = recommended_settings(paths.root)  # the model folder's inference_defaults.json
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--model {cfg.model}: {e}") from None
    try:
        derived.check_available(cfg)
    except ValueError as e:
        raise InputError(f"--consensus-distance {cfg.consensus_distance}: {e}") from None
    return recommended, model_identity(paths.as_dict())


@dataclass
class _Planner:
    """Compares each planned output with its run folder's manifest: outputs done with the same settings are
    counted as skipped, outputs made differently are collected as conflicts, the rest become tasks."""

    cfg: UpscaleConfig
    manifests: dict[Path, dict[str, dict]]  # run folder -> its manifest
    conflicts: list[tuple[RunDir, str, str, str | None]] = field(default_factory=list)

    def jobs(self, f: InputFile, scan: Scan) -> list[Job]:
        """The jobs of one input: one per frame (its tasks in every run folder), or none if it cannot be read."""
        try:
            st = f.path.stat()
        except OSError as e:
            scan.failures.append(Failure(str(f.path), f"cannot be read: {e.strerror or e}"))
            return []
        header = scan.headers.get(f.path)
        frames: list[list[Task]] = [[] for _ in range(header.frames if header else 1)]  # tasks per frame
        ext = scan.ext[f.path]
        rel_for = functools.partial(_rel_for, self.cfg, f, ext=ext)
        for run in scan.runs:
            todo = functools.partial(self.todo, run, st)
            if derived.active(self.cfg):
                frames[0] += derived.plan_tasks(run, f.output_rel(ext), self.cfg, rel_for, todo)
            else:
                self._sample_tasks(run, st, rel_for, header, frames)
        plans = scan.plans.get(f.path, ())
        return [
            Job(f, tasks, i, header, plans[i] if i < len(plans) else None) for i, tasks in enumerate(frames)
        ]

    def todo(self, run: RunDir, st: os.stat_result, rel: str, seed: int, settings: str) -> bool:
        """Whether output ``rel`` of ``run`` must be (re)made; counts a kept one, collects a conflict."""
        entry = self.manifests[run.dir].get(rel)
        status, why = output_status(run.dir, rel, entry, Expected(settings, seed, st.st_size, st.st_mtime_ns))
        if status == "missing" or self.cfg.overwrite:
            return True
        if status == "done":
            run.skipped += 1
        else:
            old = (entry or {}).get("settings")
            self.conflicts.append((run, rel, why, old if old != settings else None))
        return False

    def _sample_tasks(
        self,
        run: RunDir,
        st: os.stat_result,
        rel_for: Callable[[int], str],
        header: Header | None,
        frames: list[list[Task]],
    ) -> None:
        """The samples of one input still to make in ``run``, added to ``frames`` (tasks per frame)."""
        seed = self.cfg.seed
        for k in range(self.cfg.samples):
            rel = rel_for(k)
            if not self.todo(run, st, rel, seed + k, run.hash):
                continue
            if header is None:
                frames[0].append(Task(run, k, rel))
            else:
                want = Expected(run.hash, seed + k, st.st_size, st.st_mtime_ns)
                self._frame_tasks(run, k, rel, header, want, frames)

    def _frame_tasks(
        self, run: RunDir, k: int, rel: str, header: Header, want: Expected, frames: list[list[Task]]
    ) -> None:
        """The frames of multi-frame output ``rel`` still to make (a frame on disk and recorded is kept)."""
        todo = []
        for i in range(header.frames):
            part = frame_rel(rel, i)
            status, _ = output_status(run.dir, part, self.manifests[run.dir].get(part), want)
            if self.cfg.overwrite or status != "done":
                todo.append(i)
        if not todo:  # every frame is in but the run died before putting them together: redo the last one
            todo = [header.frames - 1]
        for i in todo:
            frames[i].append(Task(run, k, frame_rel(rel, i), final=rel))


def _conflict_message(conflicts: list[tuple[RunDir, str, str, str | None]]) -> str:
    """The refusal: up to five conflicting outputs, then how each older settings hash differs from this run's."""
    lines = [f"{len(conflicts)} outputs already exist and were not made by this exact command:"]
    for run, rel, why, _ in conflicts[:5]:
        lines.append(f"  {run.dir / rel}: {why}")
    if len(conflicts) > 5:
        lines.append(f"  ... and {len(conflicts) - 5} more")
    run = conflicts[0][0]
    old = read_run_json(run.dir).get("settings_history", {})
    for old_hash in {h for *_, h in conflicts if h is not None}:
        prev = old.get(old_hash)
        if prev:
            lines.append(
                "  settings that differ: " + "; ".join(settings_diff(prev, run.resolved.as_dict())[:8])
            )
    lines.append("Pass --overwrite to replace them, or choose another OUTPUT_DIR. Nothing was written.")
    return "\n".join(lines)


def input_dirs(cfg: UpscaleConfig) -> list[Path]:
    return [Path(p).resolve() for p in cfg.inputs if Path(p).is_dir()]
