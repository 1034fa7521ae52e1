"""Consistency across seeds: the uncertainty map, its heat map, the consensus pick and the mean.

CCSR's claim is that its outputs vary little with the noise seed (G-STD / L-STD, arXiv 2401.00877
Sec. IV). With K samples of one image (seeds ``seed .. seed + K - 1``) this module tells a user
*where* they still vary and gives one output that is not an outlier:

* :func:`uncertainty_map`: the per-pixel population standard deviation over the K samples, averaged
  over channels: exactly the map whose mean is L-STD (:func:`ccsr.metrics.stability.l_std_map`, here
  without the border crop);
* :func:`render_heatmap`: that map as an RGB heat map with a colour bar (numpy + PIL only);
* :func:`consensus_pick`: the medoid, the sample with the least mean distance to the *other* samples
  (L1 on the BT.601 luma by default, or LPIPS through :func:`lpips_distance`);
* :func:`mean_image`: the pixel mean of the samples, in float; round it once when writing
  (:func:`ccsr.encode.to_output_pixels`), never per sample.

Samples are given as a sequence of PIL images, integer arrays ``(H, W)`` / ``(H, W, C)`` (uint8 or
uint16, scaled by their peak), float arrays ``(C, H, W)`` in ``[0, 1]`` (the pipeline's and the
runner's layout), or one float array / tensor ``(K, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Distances the consensus pick knows: mean absolute difference of BT.601 Y, or LPIPS.
DISTANCES = ("l1-y", "lpips")
#: ``ccsr upscale --select``: the medoid of the samples, or their pixel mean.
SELECTIONS = ("consensus", "mean")
#: The colour bar's label: what the heat map shows.
HEATMAP_LABEL = "std over seeds"
# matplotlib's "inferno" sampled at 17 points (the report's heat maps use it): dark = stable, bright = varies.
_INFERNO = np.array(
    [
        (0, 0, 3), (10, 7, 35), (32, 12, 74), (60, 9, 101), (87, 15, 109), (112, 25, 110), (137, 34, 105),
        (163, 43, 97), (187, 55, 84), (209, 70, 67), (228, 90, 49), (241, 114, 29), (249, 142, 8),
        (251, 172, 16), (248, 203, 52), (241, 233, 104), (252, 254, 164),
    ],
    dtype=np.float64,
)  # fmt: skip


def _one(sample: object) -> np.ndarray:
    """One sample -> ``(C, H, W)`` float64 in ``[0, 1]``."""
    if isinstance(sample, Image.Image):
        sample = np.asarray(sample.convert("RGB") if sample.mode not in ("L", "RGB") else sample)
    a = np.asarray(sample)
    if np.issubdtype(a.dtype, np.integer):
        peak = 65535.0 if a.dtype == np.uint16 else 255.0
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise ValueError(f"an integer image must be (H, W) or (H, W, C), got shape {a.shape}")
        return a.astype(np.float64).transpose(2, 0, 1) / peak
    if a.ndim != 3:
        raise ValueError(f"a float image must be (C, H, W) in [0, 1], got shape {a.shape}")
    return a.astype(np.float64)


def as_stack(samples: Sequence[object] | np.ndarray) -> np.ndarray:
    """K samples (see the module docstring) -> ``(K, C, H, W)`` float64 in ``[0, 1]``; checks K >= 2,
    equal shapes and the value range."""
    if hasattr(samples, "detach"):  # a torch tensor
        samples = samples.detach().cpu().numpy()
    if isinstance(samples, np.ndarray) and samples.ndim == 4 and not np.issubdtype(samples.dtype, np.integer):
        x = samples.astype(np.float64)
    else:
        parts = [_one(s) for s in samples]
        shapes = {p.shape for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"samples must all have one shape, got {sorted(shapes)}")
        x = np.stack(parts) if parts else np.zeros((0, 3, 1, 1))
    if x.shape[0] < 2:
        raise ValueError(f"consistency needs at least 2 samples (seeds) of the image, got {x.shape[0]}")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"float samples must be in [0, 1], got min={lo:.4g}, max={hi:.4g}")
    return x


def uncertainty_map(samples: Sequence[object] | np.ndarray) -> np.ndarray:
    """Per-pixel population std over the samples, mean over channels: ``(H, W)`` float32.

    The same computation as the L-STD heat map (:func:`ccsr.metrics.stability.l_std_map`, no border
    crop); its mean is the image's L-STD on the uncropped image. Two samples ``0`` and ``c`` give ``c / 2``.
    """
    import torch

    from ccsr.metrics.stability import l_std_map

    return l_std_map(torch.from_numpy(as_stack(samples)), crop=0).to(torch.float32).numpy()


def colorize(values: np.ndarray, vmax: float) -> np.ndarray:
    """``(H, W)`` values -> ``(H, W, 3)`` uint8 through the inferno colour map on ``[0, vmax]``."""
    v = np.asarray(values, dtype=np.float64)
    t = np.clip(v / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(v)
    grid = np.linspace(0.0, 1.0, len(_INFERNO))
    rgb = [np.interp(t, grid, _INFERNO[:, c]) for c in range(3)]
    return np.round(np.stack(rgb, axis=-1)).astype(np.uint8)


def render_heatmap(std_map: np.ndarray, vmax: float | None = None, label: str = HEATMAP_LABEL) -> Image.Image:
    """The map at its own resolution (pixel-aligned with the outputs) with a colour bar on its right.

    ``vmax`` is the value shown brightest (default: the map's maximum); the bar is labelled with 0,
    ``vmax / 2`` and ``vmax`` in ``[0, 1]`` RGB units, and ``label`` runs down its side.
    """
    m = np.asarray(std_map, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"std_map must be (H, W), got shape {m.shape}")
    top = float(m.max()) if vmax is None else float(vmax)
    h, w = m.shape
    font = ImageFont.load_default()
    bar_w, pad, text_w = 12, 6, 44
    height = max(h, 96)
    canvas = Image.new("RGB", (w + pad + bar_w + 4 + text_w, height), "white")
    canvas.paste(Image.fromarray(colorize(m, top)), (0, 0))
    ramp = np.linspace(top, 0.0, height - 12)[:, None].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray(colorize(ramp, top)), (w + pad, 6))
    draw = ImageDraw.Draw(canvas)
    x = w + pad + bar_w + 4
    for frac, y in ((1.0, 0), (0.5, (height - 12) // 2), (0.0, height - 14)):
        draw.text((x, y), f"{top * frac:.3g}", fill="black", font=font)
    strip = Image.new("RGB", (height, 12), "white")
    ImageDraw.Draw(strip).text((2, 0), label[: max(1, height // 6)], fill="black", font=font)
    canvas.paste(strip.rotate(90, expand=True), (canvas.width - 12, 0))
    return canvas


# ---------------------------------------------------------------------------------------------- consensus
@dataclass(frozen=True)
class Consensus:
    """The medoid of K samples: ``index`` has the least mean distance to the others."""

    index: int
    mean_distances: tuple[float, ...]  # per sample: mean distance to the K - 1 others
    distances: np.ndarray  # (K, K), symmetric, zero diagonal
    distance: str  # "l1-y" or "lpips"

    def as_record(self, digits: int = 6) -> dict:
        """JSON-ready fields for a manifest line."""
        return {
            "chosen_sample": self.index,
            "distance": self.distance,
            "mean_distances": [round(d, digits) for d in self.mean_distances],
            "distances": [[round(float(d), digits) for d in row] for row in self.distances],
        }


def luma(stack: np.ndarray) -> np.ndarray:
    """``(K, C, H, W)`` in ``[0, 1]`` -> ``(K, H, W)`` BT.601 Y (the metrics' and the SSIM loss's luma);
    a one-channel stack is its own luma."""
    import torch

    from ccsr.training.ssim import luma as y_of

    if stack.shape[1] == 1:
        return stack[:, 0]
    return y_of(torch.from_numpy(stack)).numpy()[:, 0]


def l1_y_distances(stack: np.ndarray) -> np.ndarray:
    """``(K, K)`` mean absolute difference of the samples' luma."""
    y = luma(stack)
    k = len(y)
    d = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            d[i, j] = d[j, i] = float(np.abs(y[i] - y[j]).mean())
    return d


def lpips_distance(
    net: str = "alex", backbone_weights: str | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """A ``(K, C, H, W) -> (K, K)`` LPIPS distance function, or ValueError saying what is missing.

    LPIPS needs torchvision's ImageNet trunk weights, which are never downloaded here: they are read
    from ``backbone_weights`` or torchvision's cache (:func:`ccsr.training.perceptual.build_lpips`).
    """
    import torch

    try:
        from ccsr.training.perceptual import build_lpips

        model = build_lpips(net, backbone_weights)
    except (ImportError, FileNotFoundError, ValueError) as e:
        raise ValueError(
            f"the LPIPS consensus distance is not available here: {e}. Use the default distance, l1-y "
            "(L1 on the luma), which needs no weights."
        ) from None

    def distances(stack: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(stack).float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = x * 2 - 1
        k = len(x)
        d = np.zeros((k, k))
        with torch.no_grad():
            for i in range(k):
                for j in range(i + 1, k):
                    d[i, j] = d[j, i] = float(model(x[i : i + 1], x[j : j + 1]).mean())
        return d

    return distances


def consensus_pick(
    samples: Sequence[object] | np.ndarray,
    distance: str | Callable[[np.ndarray], np.ndarray] = "l1-y",
) -> Consensus:
    """The medoid of the samples: least mean distance to the other samples (ties: the lowest index).

    ``distance`` is ``"l1-y"`` (default), ``"lpips"`` (needs the trunk weights, see
    :func:`lpips_distance`), or a function ``(K, C, H, W) -> (K, K)``.
    """
    stack = as_stack(samples)
    if callable(distance):
        name, fn = getattr(distance, "__name__", "custom"), distance
    elif distance == "l1-y":
        name, fn = distance, l1_y_distances
    elif distance == "lpips":
        name, fn = distance, lpips_distance()
    else:
        raise ValueError(f"distance={distance!r}: choose one of {DISTANCES} or pass a function")
    d = np.asarray(fn(stack), dtype=np.float64)
    k = len(stack)
    mean = d.sum(axis=1) / (k - 1)
    return Consensus(int(np.argmin(mean)), tuple(float(v) for v in mean), d, name)


def mean_image(samples: Sequence[object] | np.ndarray) -> np.ndarray:
    """The pixel mean of the samples, ``(C, H, W)`` float64 in ``[0, 1]``, not rounded: round it once when
    writing (``ccsr.encode.to_output_pixels``), so K samples of 10.4, 10.4, 10.4, 12.4 give 11, not 10."""
    return as_stack(samples).mean(axis=0)
