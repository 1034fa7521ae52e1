"""Planning a folder run (steps 0 and 1 of :mod:`ccsr.upscale.run`): which inputs, which outputs, which of
them are done, and every check that needs no model, before the model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ccsr.io import IMAGE_EXTENSIONS, OUTPUT_FORMATS
from ccsr.models.shipped import resolve_model_root
from ccsr.upscale import derived
from ccsr.upscale.config import UpscaleConfig
from ccsr.upscale.discovery import Discovery, InputError, InputFile, assign_outputs, check_writable, discover
from ccsr.upscale.frames import container_ext, frame_rel
from ccsr.upscale.limits import Header, read_header, size_problem
from ccsr.upscale.loop import Job, RunDir, Task
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
    settings_hash,
)
from ccsr.upscale.runlog import Failure, read_run_json


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
    ext = OUTPUT_FORMATS[cfg.output_format][0]
    frames = "first" if derived.active(cfg) else cfg.frames  # samples of one frame are compared

    def ext_for(f: InputFile) -> str:
        return container_ext(headers[f.path], cfg.output_format, frames) or ext

    files, collisions = assign_outputs(found.files, ext_for)
    failures = [Failure(p, r) for p, r in found.failures + collisions]
    notes = []
    if found.ignored_subfolders:
        notes.append(
            f"note: {found.ignored_subfolders} sub-folders not scanned (pass --recursive to include them)"
        )
    planned = [r.dir / name for r in runs for name in (RUN_JSON, MANIFEST, FAILURES, FAILURES_JSONL)]
    planned += [
        r.dir / rel
        for r in runs
        for f in files
        for rel in derived.output_rels(
            cfg, f.output_rel(ext_for(f)), lambda k, f=f: _rel_for(cfg, f, k, ext_for(f))
        )
    ]
    check_writable(planned, Path(cfg.output), found)
    scan = Scan([], failures, notes, runs)
    for f in files:
        header = headers[f.path]
        why = None
        if header is not None:
            multi = container_ext(header, cfg.output_format, frames) is not None
            scan.sizes[f.path] = header.sizes if multi else header.sizes[:1]
            scan.headers[f.path] = header if multi else None
            scan.ext[f.path] = ext_for(f)
            for size in scan.sizes[f.path]:
                why = why or size_problem(
                    size, cfg.scale, cfg.process_size, cfg.max_pixels, cfg.max_output_pixels
                )
        else:
            scan.ext[f.path] = ext
        if why:
            failures.append(Failure(str(f.path), why))
        else:
            scan.files.append(f)
    return scan


def _check_model_path(model: str) -> None:
    """A --model that is clearly a local path (not a Hub repo id) must exist."""
    if model == "tiny":
        return
    p = Path(model).expanduser()
    if (p.is_absolute() or model.startswith((".", "~"))) and not p.exists():
        raise InputError(f"--model {model}: the folder does not exist")


def _rel_for(cfg: UpscaleConfig, f: InputFile, k: int, ext: str) -> str:
    return (f"sample{k:02d}/" if cfg.samples > 1 else "") + f.output_rel(ext)


def plan_jobs(cfg: UpscaleConfig, device, scan: Scan) -> tuple[list[Job], dict, str]:
    from ccsr.models.loading import check_base_matches, recommended_settings, resolve_paths
    from ccsr.pipeline import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT
    from ccsr.schedule import leading_timesteps, make_schedule, preset_for_steps

    runs, failures = scan.runs, scan.failures
    try:
        root = resolve_model_root(cfg.model)
        paths = resolve_paths(root, cfg.base, cfg.controlnet, cfg.vae)
        check_base_matches(paths)
        recommended = recommended_settings(paths.root)  # the model folder's inference_defaults.json
        color_fix = cfg.color_fix or recommended["color_fix"]
        postprocess = cfg.postprocess or recommended["postprocess"]
        tile_window = cfg.tile_window or recommended["tile_window"]
        border_pad = recommended["border_pad"]
    except (FileNotFoundError, ValueError) as e:
        raise InputError(f"--model {cfg.model}: {e}") from None
    try:
        derived.check_available(cfg)
    except ValueError as e:
        raise InputError(f"--consensus-distance {cfg.consensus_distance}: {e}") from None
    identity = model_identity(paths.as_dict())
    dtype_name = cfg.resolved_precision(device.type)
    for run in runs:
        preset = preset_for_steps(run.steps)
        n = cfg.num_inference_steps or preset.num_inference_steps
        t_max = preset.t_max if cfg.t_max is None else cfg.t_max
        t_min = preset.t_min if cfg.t_min is None else cfg.t_min
        try:  # fail before any work on a schedule the reference would crash on
            make_schedule(leading_timesteps(n), t_max, t_min, cfg.start_timestep)
        except ValueError as e:
            raise InputError(f"steps {run.steps}: {e}") from None
        run.settings = {
            "model": {k: v["sha256"] for k, v in identity.items()},
            "steps": run.steps,
            "num_inference_steps": n,
            "t_max": t_max,
            "t_min": t_min,
            "guidance_scale": preset.guidance_scale if cfg.guidance_scale is None else cfg.guidance_scale,
            "start_timestep": cfg.start_timestep,
            "start_point": cfg.start_point,
            "prompt": DEFAULT_PROMPT if cfg.prompt is None else cfg.prompt,
            "negative_prompt": DEFAULT_NEGATIVE_PROMPT
            if cfg.negative_prompt is None
            else cfg.negative_prompt,
            "scale": cfg.scale,
            "process_size": cfg.process_size,
            "color_fix": color_fix,
            "postprocess": postprocess,
            "tile_window": tile_window,
            "border_pad": border_pad,
            "precision": dtype_name,
            "tiling": cfg.tiling_settings(),
            "format": cfg.output_format,
            "quality": cfg.quality if cfg.output_format in ("jpg", "webp") else None,
            "frames": cfg.frames,
        }
        if derived.select_settings(cfg):
            run.settings["select"] = derived.select_settings(cfg)
        run.hash = settings_hash(run.settings)

    manifests = {id(r): read_manifest(r.dir / MANIFEST) for r in runs}
    jobs, conflicts = [], []
    for f in scan.files:
        try:
            st = f.path.stat()
        except OSError as e:
            failures.append(Failure(str(f.path), f"cannot be read: {e.strerror or e}"))
            continue
        header = scan.headers.get(f.path)
        frames = [[] for _ in range(header.frames if header else 1)]  # tasks per frame
        out_ext = scan.ext[f.path]
        for run in runs:

            def todo(rel: str, seed: int, settings: str, run=run, st=st) -> bool:
                want = Expected(settings, seed, st.st_size, st.st_mtime_ns)
                status, why = output_status(run.dir, rel, manifests[id(run)].get(rel), want)
                if status == "done" and not cfg.overwrite:
                    run.skipped += 1
                elif status == "conflict" and not cfg.overwrite:
                    old_settings = (manifests[id(run)].get(rel) or {}).get("settings")
                    conflicts.append((run, rel, why, old_settings if old_settings != settings else None))
                else:
                    return True
                return False

            if derived.active(cfg):
                frames[0] += derived.plan_tasks(
                    run, f.output_rel(out_ext), cfg, lambda k, f=f, e=out_ext: _rel_for(cfg, f, k, e), todo
                )
                continue
            for k in range(cfg.samples):
                rel = _rel_for(cfg, f, k, out_ext)
                if not todo(rel, cfg.seed + k, run.hash):
                    continue
                if header is None:
                    frames[0].append(Task(run, k, rel))
                else:
                    want = Expected(run.hash, cfg.seed + k, st.st_size, st.st_mtime_ns)
                    _frame_tasks(run, k, rel, header, manifests[id(run)], want, cfg.overwrite, frames)
        jobs += [Job(f, tasks, i, header) for i, tasks in enumerate(frames)]
    if conflicts:
        raise InputError(_conflict_message(conflicts))
    return jobs, identity, dtype_name


def _frame_tasks(run, k, rel, header, manifest, want, overwrite, frames: list[list[Task]]) -> None:
    """The frames of multi-frame output ``rel`` still to make (a frame on disk and recorded is kept)."""
    todo = []
    for i in range(header.frames):
        part = frame_rel(rel, i)
        status, _ = output_status(run.dir, part, manifest.get(part), want)
        if overwrite or status != "done":
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
            lines.append("  settings that differ: " + "; ".join(settings_diff(prev, run.settings)[:8]))
    lines.append("Pass --overwrite to replace them, or choose another OUTPUT_DIR. Nothing was written.")
    return "\n".join(lines)


def input_dirs(cfg: UpscaleConfig) -> list[Path]:
    return [Path(p).resolve() for p in cfg.inputs if Path(p).is_dir()]
