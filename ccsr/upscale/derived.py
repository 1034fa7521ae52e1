"""``ccsr upscale --samples K --uncertainty-map / --select``: the outputs derived from an image's K samples.

For each input (and run folder of a step sweep):

* ``--uncertainty-map``: ``<name>_std.png`` in the run folder, beside the outputs (``sample00/ ..``
  or the selected output): the per-pixel std over the K samples as a heat map with a colour bar
  (:func:`ccsr.consistency.uncertainty_map`, :func:`ccsr.consistency.render_heatmap`).
* ``--select consensus``: one output, ``<name>.<ext>`` where a single sample would go: the medoid of the
  K samples, bit-identical to that sample of a plain ``--samples K`` run.
* ``--select mean``: one output, the float mean of the K samples, rounded once when written.

Each derived output has its manifest line (``"kind"``, ``"seeds"``, the selection and the distances),
so a re-run skips it like any output. When a derived output is missing, all K samples are computed
again (a sample whose own file is done is not rewritten). Sample k always uses seed ``seed + k``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from ccsr.upscale.config import UpscaleConfig
from ccsr.upscale.manifest import settings_hash

#: Suffix of the uncertainty heat maps (``a.jpg`` -> ``a_std.png``).
STD_SUFFIX = "_std.png"
#: ``"kind"`` of an uncertainty map's manifest line (readers of run folders skip those files).
STD_KIND = "uncertainty_map"


def std_rel(out_rel: str) -> str:
    """The heat map's path for an output path: ``sub/a.png`` -> ``sub/a_std.png``."""
    p = PurePosixPath(out_rel)
    return str(p.with_name(p.stem + STD_SUFFIX))


def active(cfg: UpscaleConfig) -> bool:
    return bool(cfg.uncertainty_map or cfg.select)


def outputs_per_image(cfg: UpscaleConfig) -> int:
    """Files one image gets in one run folder."""
    return (1 if cfg.select else cfg.samples) + (1 if cfg.uncertainty_map else 0)


def select_settings(cfg: UpscaleConfig) -> dict | None:
    """What ``--select`` adds to a run's settings (None without it, so other runs keep their hash)."""
    if cfg.select is None:
        return None
    out = {"mode": cfg.select, "samples": cfg.samples}
    if cfg.select == "consensus":
        out["distance"] = cfg.consensus_distance
    return out


def std_settings_hash(run_settings: dict, samples: int) -> str:
    """The settings hash of a heat map: the samples' settings plus K."""
    return settings_hash({**run_settings, "uncertainty_map": {"samples": samples}})


def check_available(cfg: UpscaleConfig) -> None:
    """Raise ValueError before any work when the chosen distance cannot run here (LPIPS weights)."""
    if cfg.select == "consensus":
        _distance(cfg.consensus_distance)


@lru_cache(maxsize=2)
def _distance(name: str) -> str | Callable[[np.ndarray], np.ndarray]:
    from ccsr.consistency import lpips_distance

    return lpips_distance() if name == "lpips" else name


def output_rels(cfg: UpscaleConfig, out_rel: str, rel_for: Callable[[int], str]) -> list[str]:
    """Every file an image may get in one run folder (for the write checks before any work)."""
    rels = [out_rel] if cfg.select else [rel_for(k) for k in range(cfg.samples)]
    return rels + ([std_rel(out_rel)] if cfg.uncertainty_map else [])


def plan_tasks(run, out_rel: str, cfg: UpscaleConfig, rel_for: Callable[[int], str], todo: Callable) -> list:
    """The tasks of one image in one run folder. ``todo(rel, seed, settings_hash)`` says whether an
    output must be (re)made (it counts skipped outputs and conflicts on the runner's side)."""
    from ccsr.upscale.jobs import Task

    derived = []
    if cfg.select and todo(out_rel, cfg.seed, run.hash):
        derived.append(Task(run, 0, out_rel, kind=cfg.select))
    if cfg.uncertainty_map:
        rel, h = std_rel(out_rel), std_settings_hash(run.resolved.as_dict(), cfg.samples)
        if todo(rel, cfg.seed, h):
            derived.append(Task(run, 0, rel, kind="std", settings=h))
    samples = []
    for k in range(cfg.samples):
        write = not cfg.select and todo(rel_for(k), cfg.seed + k, run.hash)
        if write or derived:
            samples.append(Task(run, k, rel_for(k) if write else None))
    return samples + derived


def derive_output(task, kept: dict, cfg: UpscaleConfig) -> tuple[np.ndarray | Image.Image, dict]:
    """Make a derived output from the image's computed samples ``kept[(run dir, k)] = (sr, info)``.

    Returns what the writer takes: a float ``(3, H, W)`` output or a rendered PIL image, and the
    manifest fields."""
    from ccsr.consistency import consensus_pick, mean_image, render_heatmap, uncertainty_map

    k_all = range(cfg.samples)
    missing = [k for k in k_all if (task.run.dir, k) not in kept]
    if missing:
        raise RuntimeError(
            f"the {task.kind} output needs all {cfg.samples} samples; sample(s) {missing} failed"
        )
    srs = [np.clip(kept[(task.run.dir, k)][0], 0.0, 1.0) for k in k_all]
    infos = [kept[(task.run.dir, k)][1] for k in k_all]
    seeds = [cfg.seed + k for k in k_all]
    if task.kind == "std":
        m = uncertainty_map(srs)
        info = {"kind": STD_KIND, "seeds": seeds, "std_mean": round(float(m.mean()), 6)}
        return render_heatmap(m), {**info, "std_max": round(float(m.max()), 6)}
    if task.kind == "consensus":
        c = consensus_pick(srs, _distance(cfg.consensus_distance))
        record = {**c.as_record(), "chosen_seed": seeds[c.index]}
        return kept[(task.run.dir, c.index)][0], {
            **infos[c.index],
            "select": "consensus",
            "seeds": seeds,
            **record,
        }
    if task.kind == "mean":
        return mean_image(srs).astype(np.float32), {**infos[0], "select": "mean", "seeds": seeds}
    raise ValueError(f"unknown derived output kind {task.kind!r}")
