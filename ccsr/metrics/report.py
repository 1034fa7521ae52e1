"""Evaluate a run folder (or a ``steps*/`` sweep) and write the report people read.

Files written into ``out_dir`` (default: the run folder):

* ``report.html``: one page, inline CSS, no scripts or network; its images live in ``report_files/`` beside it.
* ``report.md``: the same tables in Markdown. ``report.json``: settings, metric variants, means, G-STD, L-STD.
* ``per_image.csv`` (one row per run and image: mean and std over samples per metric, L-STD) and
  ``per_image.json`` (every score of every sample).
* ``report_files/``: per-pixel std heat maps of the most unstable images (PNG at image resolution, and a
  figure with the outputs and a colour bar), and ``metrics_vs_steps.png`` for a sweep.

Every file is written to a temporary name and renamed, so an interrupted run leaves the previous report.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ccsr.atomic import write_text
from ccsr.metrics.iqa import DEFAULT_METRICS, MetricInfo
from ccsr.metrics.readers import REPORT_ASSETS, PairBy, RunFolderError, to_unit
from ccsr.metrics.report_render import html_page, markdown
from ccsr.metrics.scores import RunScores, open_runs, prepare_metrics, score_run
from ccsr.metrics.stability import DEFAULT_CROP, crop_border, l_std_map

_MARKER = ".written-by-ccsr"


def write_report(
    run_dir: Path,
    gt_dir: Path | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    out_dir: Path | None = None,
    strict: bool = False,
) -> Path:
    """Evaluate ``run_dir`` (a run or a sweep of ``steps*/`` runs) and write the report; return report.html's path.

    Metrics that need a ground truth when ``gt_dir`` is None, or whose weights cannot be loaded, are listed in
    the report as not computed, with the reason (``strict=True`` makes them errors).

    Raises:
        RunFolderError: the folder cannot be evaluated as it is (the message names the files).
        ValueError: nothing can be computed (one sample per image and no metric able to run), or ``strict``.
        MetricUnavailable: ``strict`` and a metric's weights or dependency are missing.
    """
    return evaluate_folder(run_dir, gt_dir, metrics, out_dir, strict)


def evaluate_folder(
    run_dir: str | os.PathLike,
    gt_dir: str | os.PathLike | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    out_dir: str | os.PathLike | None = None,
    strict: bool = False,
    *,
    device: str | None = None,
    crop: int = DEFAULT_CROP,
    pair_by: PairBy = "name",
    top: int = 8,
    min_samples: int = 1,
    progress: bool = True,
) -> Path:
    """:func:`write_report` with every option (the ``ccsr evaluate`` / ``ccsr stability`` commands)."""
    import torch

    metrics = DEFAULT_METRICS if metrics is None else tuple(metrics)
    runs = open_runs(run_dir, gt_dir, pair_by)  # all folders checked before any metric is loaded
    for label, _, run in runs:
        if run.num_samples < min_samples:
            raise RunFolderError(
                f"{run.root} ({label}) has {run.num_samples} sample(s) per image; stability needs at least {min_samples}: "
                f"write several with `ccsr upscale --samples 10` (folders sample00, sample01, ...)"
            )
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    assets = out / REPORT_ASSETS
    if assets.exists() and not (assets / _MARKER).exists():
        raise RunFolderError(f"{assets} exists and was not written by ccsr; move it or choose another --out")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded, infos, not_computed = prepare_metrics(list(metrics), dev, gt_dir is not None, strict)
    if not loaded and all(run.num_samples < 2 for _, _, run in runs):
        raise ValueError(
            "nothing to compute: one sample per image (no L-STD) and no metric could run"
            + "".join(f"\n  {r}" for r in not_computed.values())
        )
    results = [score_run(run, loaded, crop, label, steps, progress=progress) for label, steps, run in runs]
    tmp = out / f".{REPORT_ASSETS}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / _MARKER).write_text("report images written by ccsr.metrics.report; replaced on every report\n")
    unstable = _draw_unstable(results, top, tmp)
    sweep_plot = (
        _draw_sweep(results, infos, tmp)
        if any(r.steps is not None for r in results) and len(results) > 1
        else None
    )
    ctx = {
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "run_dir": str(Path(run_dir).resolve()),
        "gt_dir": None if gt_dir is None else str(Path(gt_dir).resolve()),
        "crop": crop,
        "device": str(dev),
        "pair_by": pair_by,
        "versions": _versions(),
    }
    summary = _summary(results, infos, not_computed, unstable, ctx)
    files = {
        "report.json": json.dumps(summary, indent=2, ensure_ascii=False),
        "per_image.json": json.dumps(_per_image_json(results), indent=1),
        "per_image.csv": _per_image_csv(results),
        "report.md": markdown(summary, sweep_plot),
        "report.html": html_page(summary, sweep_plot),
    }
    if assets.exists():
        shutil.rmtree(assets)
    os.replace(tmp, assets)
    for name, text in files.items():
        write_text(out / name, text)
    return out / "report.html"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ccsr", "pyiqa", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _slug(name: str) -> str:
    """A file-name-safe version of ``name`` (URL-safe too, for the HTML links)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-80:]


def _uint8_hwc(x) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


def _draw_unstable(results: list[RunScores], top: int, assets: Path) -> dict[str, list[dict]]:
    """Heat maps of each run's ``top`` most unstable images; one colour scale for the whole report."""
    from ccsr.metrics.figures import save_heatmap_png, save_unstable_figure

    maps: dict[str, list[tuple[int, np.ndarray]]] = {}
    for r in results:
        maps[r.label] = [
            (i, l_std_map(to_unit(r.run.load_samples(i)), r.crop).numpy()) for i in r.most_unstable(top)
        ]
    every = [m for v in maps.values() for _, m in v]
    # The 99.5th percentile, not the maximum: a few hot pixels would otherwise wash every map out.
    vmax = float(np.percentile(np.concatenate([m.ravel() for m in every]), 99.5)) if every else 0.0
    out: dict[str, list[dict]] = {}
    for r in results:
        folder = assets / _slug(r.label)
        folder.mkdir(exist_ok=True)
        rows = []
        lstd = r.l_std_per_image
        for rank, (i, m) in enumerate(maps[r.label], start=1):
            assert lstd is not None, "most_unstable lists images only when L-STD was computed"
            stem = f"{rank:02d}_{_slug(r.run.names[i].rsplit('.', 1)[0])}"
            samples = r.run.load_samples(i)
            panels = (
                []
                if r.run.gt_files is None
                else [("ground truth", _uint8_hwc(crop_border(r.run.load_gt(i), r.crop)))]
            )
            panels += [
                (f"sample {k}", _uint8_hwc(crop_border(samples[k], r.crop)))
                for k in range(min(2, len(samples)))
            ]
            heat = folder / f"{stem}_std.png"
            fig = folder / f"{stem}_figure.png"
            save_heatmap_png(m, vmax, heat)
            title = f"{r.label}: {r.run.names[i]}  L-STD {lstd[i]:.4f}"
            save_unstable_figure(panels, m, vmax, title, fig)
            rows.append(
                {
                    "name": r.run.names[i],
                    "l_std": float(lstd[i]),
                    "std": {n: float(s.per_image_std()[i]) for n, s in r.metrics.items() if s.image_level},
                    "heatmap": f"{REPORT_ASSETS}/{folder.name}/{heat.name}",
                    "figure": f"{REPORT_ASSETS}/{folder.name}/{fig.name}",
                    "vmax": vmax,
                }
            )
        out[r.label] = rows
    return out


def _draw_sweep(results: list[RunScores], infos: dict[str, MetricInfo], assets: Path) -> str:
    from ccsr.metrics.figures import save_sweep_plot

    steps = [r.steps for r in results if r.steps is not None]
    assert len(steps) == len(results), "the sub-runs of a sweep all have a step count"
    series: dict[str, tuple[Sequence[float], Sequence[float | None], str]] = {}
    for n, info in infos.items():
        if all(n in r.metrics for r in results):
            series[n] = (
                [r.metrics[n].mean for r in results],
                [r.metrics[n].g_std for r in results],
                info.arrow,
            )
    l_stds = [r.l_std for r in results if r.l_std is not None]
    if len(l_stds) == len(results):
        series["L-STD"] = (l_stds, [None] * len(results), "↓")
    if not series:
        return ""
    save_sweep_plot(steps, series, assets / "metrics_vs_steps.png")
    return f"{REPORT_ASSETS}/metrics_vs_steps.png"


def _summary(results, infos, not_computed, unstable, ctx) -> dict:
    runs = []
    for r in results:
        runs.append(
            {
                "label": r.label,
                "steps": r.steps,
                "folder": str(r.run.root.resolve()),
                "layout": r.run.layout,
                "samples": r.run.num_samples,
                "images": r.run.num_images,
                "seconds": round(r.seconds, 3),
                "metrics": {
                    n: {
                        "mean": s.mean,
                        "g_std": s.g_std,
                        **({} if s.image_level else {"per_sample": s.per_sample.tolist()}),
                    }
                    for n, s in r.metrics.items()
                },
                "l_std": r.l_std,
                "not_computed": r.not_computed,
                "failures": list(r.run.failures),
                "most_unstable": unstable.get(r.label, []),
            }
        )
    metric_meta = {
        n: {
            "pyiqa_name": i.pyiqa_name,
            "options": dict(i.options),
            "note": i.note,
            "lower_better": i.lower_better,
            "mode": i.mode,
            "level": i.level,
        }
        for n, i in infos.items()
    }
    return {**ctx, "metrics": metric_meta, "not_computed": not_computed, "runs": runs}


def _per_image_json(results: list[RunScores]) -> dict:
    runs = []
    for r in results:
        images = []
        for i, name in enumerate(r.run.names):
            images.append(
                {
                    "name": name,
                    "gt": None if r.run.gt_files is None else str(r.run.gt_files[i]),
                    "l_std": None if r.l_std_per_image is None else float(r.l_std_per_image[i]),
                    "scores": {n: s.per_sample[:, i].tolist() for n, s in r.metrics.items() if s.image_level},
                }
            )
        runs.append(
            {
                "label": r.label,
                "steps": r.steps,
                "samples": [d.name for d in r.run.sample_dirs],
                "images": images,
            }
        )
    return {"runs": runs}


def _per_image_csv(results: list[RunScores]) -> str:
    names = sorted({n for r in results for n, s in r.metrics.items() if s.image_level}, key=lambda n: n)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["run", "steps", "image", "samples", *[f"{n}_{k}" for n in names for k in ("mean", "std")], "l_std"]
    )
    for r in results:
        for i, name in enumerate(r.run.names):
            row = [r.label, "" if r.steps is None else r.steps, name, r.run.num_samples]
            for n in names:
                s = r.metrics.get(n)
                row += (
                    ["", ""]
                    if s is None
                    else [repr(float(s.per_sample[:, i].mean())), repr(float(s.per_image_std()[i]))]
                )
            row.append("" if r.l_std_per_image is None else repr(float(r.l_std_per_image[i])))
            w.writerow(row)
    return buf.getvalue()
