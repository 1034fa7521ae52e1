"""Figures for the report: per-pixel std heat maps (with a colour bar) and metric-vs-step-count plots.

matplotlib is used through ``Figure`` + the Agg canvas directly, never ``pyplot``, so the caller's
global backend and open figures are left alone. Imported lazily by :mod:`ccsr.metrics.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: Perceptually uniform and readable in grey: dark = stable, bright = varies across samples.
COLORMAP = "inferno"
COLORBAR_LABEL = "per-pixel std over samples ([0,1] RGB, mean of channels)"


def _canvas(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_heatmap_png(std_map: torch.Tensor | np.ndarray, vmax: float, path: Path) -> None:
    """The heat map at the image's own resolution, colour-mapped with ``[0, vmax]`` (no axes)."""
    import matplotlib

    m = np.asarray(std_map, dtype=np.float64)
    norm = np.clip(m / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(m)
    rgba = matplotlib.colormaps[COLORMAP](norm, bytes=True)
    Image.fromarray(rgba[..., :3]).save(path)


def save_unstable_figure(
    panels: Sequence[tuple[str, np.ndarray]], std_map: np.ndarray, vmax: float, title: str, path: Path
) -> None:
    """One row: the given image panels (``(label, uint8 (H, W, 3))``), then the std map with a colour bar."""
    h, w = std_map.shape
    n = len(panels) + 1
    side = 3.0
    fig = _canvas((side * n * max(w / h, 0.5) + 0.8, side + 0.6))
    axes = fig.subplots(1, n)
    for ax, (label, img) in zip(axes, panels):
        ax.imshow(img)
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    im = axes[-1].imshow(std_map, cmap=COLORMAP, vmin=0.0, vmax=vmax if vmax > 0 else 1e-6)
    axes[-1].set_title("per-pixel std", fontsize=9)
    axes[-1].set_axis_off()
    cbar = fig.colorbar(im, ax=axes[-1], fraction=0.046, pad=0.03)
    cbar.set_label(COLORBAR_LABEL, fontsize=7)
    cbar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)


def save_sweep_plot(
    steps: Sequence[int], series: dict[str, tuple[Sequence[float], Sequence[float | None], str]], path: Path
) -> None:
    """One small panel per series: mean against step count, G-STD as error bars.

    Args:
        steps: the x values (step counts), ascending.
        series: ``{label: (means, g_stds or None each, arrow)}``; the arrow (↑/↓) goes in the title.
    """
    n = len(series)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = _canvas((3.2 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (label, (means, errs, arrow)) in zip(axes, series.items()):
        yerr = None if all(e is None for e in errs) else [0.0 if e is None else e for e in errs]
        ax.errorbar(list(steps), list(means), yerr=yerr, marker="o", capsize=3)
        ax.set_title(f"{label} {arrow}", fontsize=10)
        ax.set_xlabel("steps", fontsize=8)
        ax.set_xticks(list(steps))
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(
            axis="y", useOffset=False
        )  # nearly equal values would otherwise read "1e-5+0.1375"
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.savefig(path)
