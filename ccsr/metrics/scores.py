"""Scores for run folders: per-image metrics for every sample, G-STD, L-STD and folder-level FID.

The protocol is CCSR's (docs/algorithm.md §5): images read as 8-bit and divided by 255, a 4-pixel border cropped
on every side before the image metrics and L-STD, G-STD and L-STD with population std (ddof 0).
FID is computed per sample folder against the ground-truth folder on whole images and averaged over
samples (the paper gives FID no G-STD).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ccsr.metrics.readers import PairBy, RunFolder, find_sweep, open_run, to_unit
from ccsr.metrics.stability import DEFAULT_CROP, crop_border, g_std, l_std, per_image_std

if TYPE_CHECKING:  # the annotations only: ccsr.metrics.iqa is imported where metrics are loaded
    from ccsr.metrics.iqa import Metric, MetricInfo


@dataclass
class MetricScores:
    """``per_sample``: ``(S, N)`` for image metrics (sample s, image n); ``(S,)`` for folder metrics."""

    info: MetricInfo
    per_sample: np.ndarray

    @property
    def image_level(self) -> bool:
        return self.per_sample.ndim == 2

    @property
    def mean(self) -> float:
        return float(self.per_sample.mean())

    @property
    def g_std(self) -> float | None:
        """None for folder metrics and single-sample runs, where it is not defined."""
        if not self.image_level or self.per_sample.shape[0] < 2:
            return None
        return float(g_std(torch.from_numpy(self.per_sample)))

    def per_image_std(self) -> np.ndarray:
        return per_image_std(torch.from_numpy(self.per_sample)).numpy()


@dataclass
class RunScores:
    """Everything measured on one run folder."""

    run: RunFolder
    label: str  # "steps4" in a sweep, else the run folder's name
    steps: int | None
    crop: int
    metrics: dict[str, MetricScores] = field(default_factory=dict)
    l_std_per_image: np.ndarray | None = None  # (N,); None when the run has one sample
    not_computed: dict[str, str] = field(default_factory=dict)  # metric -> reason, for this run only
    seconds: float = 0.0

    @property
    def l_std(self) -> float | None:
        return None if self.l_std_per_image is None else float(self.l_std_per_image.mean())

    def most_unstable(self, top: int) -> list[int]:
        """Indices of the ``top`` images with the highest L-STD (ties: name order)."""
        lstd = self.l_std_per_image
        if lstd is None:
            return []
        order = sorted(range(self.run.num_images), key=lambda i: (-lstd[i], self.run.names[i]))
        return order[:top]


def prepare_metrics(
    names: Sequence[str], device: str | torch.device, have_gt: bool, strict: bool = False
) -> tuple[dict[str, Metric], dict[str, MetricInfo], dict[str, str]]:
    """Resolve and load metrics.

    Returns:
        ``(loaded, infos, not_computed)``: loaded :class:`~ccsr.metrics.iqa.Metric` objects, the metadata of every
        requested metric, and ``{name: reason}`` for those that cannot run here (shown in the report).

    Raises:
        ValueError: unknown name, or (``strict``) a metric needing a ground truth when there is none.
        MetricUnavailable: (``strict``) weights or dependency missing.
    """
    from ccsr.metrics.iqa import MetricUnavailable, load_metric, metric_info

    if len(set(names)) != len(names):
        raise ValueError(f"metric names repeat: {list(names)}")
    infos = {n: metric_info(n) for n in names}  # unknown names fail here, before any work
    loaded: dict[str, Metric] = {}
    not_computed: dict[str, str] = {}
    for n, info in infos.items():
        if info.needs_gt and not have_gt:
            reason = f"{n} needs a ground-truth folder (--gt)"
            if strict:
                raise ValueError(reason)
            not_computed[n] = reason
            continue
        try:
            loaded[n] = load_metric(n, device)
        except MetricUnavailable as e:
            if strict:
                raise
            not_computed[n] = str(e)
    return loaded, infos, not_computed


def score_run(
    run: RunFolder,
    metrics: dict[str, Metric],
    crop: int = DEFAULT_CROP,
    label: str | None = None,
    steps: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> RunScores:
    """Score every image of every sample of ``run`` with ``metrics`` (from :func:`prepare_metrics`)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    s_count, n_count = run.num_samples, run.num_images
    result = RunScores(run, label or run.root.name, steps, crop)
    image_metrics = {n: m for n, m in metrics.items() if m.info.level == "image"}
    table = {n: np.zeros((s_count, n_count)) for n in image_metrics}
    lstd = np.zeros(n_count) if s_count > 1 else None
    for i in tqdm(range(n_count), desc=f"scoring {result.label}", unit="img", disable=not progress):
        x = to_unit(run.load_samples(i))
        if lstd is not None:
            lstd[i] = float(l_std(x, crop))
        if not image_metrics:
            continue
        x = crop_border(x, crop)
        gt = crop_border(to_unit(run.load_gt(i))[None], crop) if run.gt_files is not None else None
        for n, m in image_metrics.items():
            if m.info.mode == "FR" and gt is None:
                raise ValueError(f"{n} needs the ground truth; open the run with gt_dir")
            vals = [m.score(x[b : b + batch_size], gt) for b in range(0, s_count, batch_size)]
            table[n][:, i] = torch.cat(vals).numpy()
    for n, m in metrics.items():
        if m.info.level == "image":
            result.metrics[n] = MetricScores(m.info, table[n])
        else:
            if run.gt_files is None:
                raise ValueError(f"{n} needs the ground-truth folder; open the run with gt_dir")
            if n_count < 2:
                result.not_computed[n] = (
                    f"{n} needs at least 2 images per folder; {result.label} has {n_count}"
                )
                continue
            per = [m.score_folders(run.gt_files, run.sample_files(k)) for k in range(s_count)]
            result.metrics[n] = MetricScores(m.info, np.asarray(per, dtype=np.float64))
    result.l_std_per_image = lstd
    result.seconds = time.perf_counter() - t0
    return result


def open_runs(
    run_dir: str | os.PathLike, gt_dir: str | os.PathLike | None = None, pair_by: PairBy = "name"
) -> list[tuple[str, int | None, RunFolder]]:
    """``[(label, steps, RunFolder)]``: one entry for a run, one per ``steps{S}/`` for a sweep.

    Every folder is opened and checked before anything is computed, so a bad sub-run fails at once.
    """
    sweep = find_sweep(run_dir)
    if sweep:
        return [(d.name, s, open_run(d, gt_dir, pair_by)) for s, d in sweep]
    run = open_run(run_dir, gt_dir, pair_by)
    return [(Path(run_dir).resolve().name, None, run)]
