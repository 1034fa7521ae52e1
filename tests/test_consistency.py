"""ccsr.consistency on small hand-computed arrays: uncertainty map, heat map, consensus pick, mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ccsr.consistency import (
    _INFERNO,
    consensus_pick,
    lpips_distance,
    mean_image,
    render_heatmap,
    uncertainty_map,
)
from ccsr.encode import to_output_pixels
from ccsr.metrics.stability import l_std


def gray(*values: float) -> np.ndarray:
    """A ``(1, 1, len(values))`` float image in [0, 1]."""
    return np.array(values, dtype=np.float64).reshape(1, 1, -1)


def test_uncertainty_map_is_the_population_std_over_samples_mean_over_channels():
    m = uncertainty_map([gray(0.0, 0.3), gray(0.2, 0.3), gray(0.4, 0.3)])
    # pixel 0: values 0, .2, .4 -> sqrt((.04 + 0 + .04) / 3); pixel 1: all equal
    assert m.shape == (1, 2) and m.dtype == np.float32
    np.testing.assert_allclose(m, [[np.sqrt(0.08 / 3), 0.0]], rtol=1e-6)
    # RGB: per-channel stds .1, .2, .3 (two samples 0 and c give c / 2), averaged: .2
    a, b = np.zeros((3, 1, 1)), np.array([0.2, 0.4, 0.6]).reshape(3, 1, 1)
    np.testing.assert_allclose(uncertainty_map([a, b]), [[0.2]], rtol=1e-6)
    # uint8 arrays and PIL images are scaled by 255; the map's mean is L-STD without the crop
    u8 = [np.full((2, 3, 3), v, np.uint8) for v in (0, 51, 102)]
    np.testing.assert_allclose(uncertainty_map(u8), np.full((2, 3), np.sqrt(2 / 3) * 0.2), rtol=1e-5)
    pil = [Image.fromarray(x) for x in u8]
    np.testing.assert_array_equal(uncertainty_map(pil), uncertainty_map(u8))
    stack = torch.from_numpy(np.stack([x.transpose(2, 0, 1) / 255.0 for x in u8]))
    assert uncertainty_map(u8).mean() == pytest.approx(float(l_std(stack, crop=0)), rel=1e-6)


def test_uncertainty_map_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 2 samples"):
        uncertainty_map([gray(0.1)])
    with pytest.raises(ValueError, match="one shape"):
        uncertainty_map([gray(0.1), gray(0.1, 0.2)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        uncertainty_map([gray(0.1), gray(1.5)])


def test_heatmap_has_the_map_pixel_aligned_and_a_colour_bar():
    m = np.array([[0.0, 0.05], [0.1, 0.2]])
    im = render_heatmap(m)
    assert im.mode == "RGB" and im.size == (2 + 6 + 12 + 4 + 44, 96)
    px = np.asarray(im)
    assert tuple(px[0, 0]) == tuple(_INFERNO[0].astype(int))  # 0 -> darkest
    assert tuple(px[1, 1]) == tuple(_INFERNO[-1].astype(int))  # the maximum -> brightest
    assert tuple(px[0, 1]) == tuple(_INFERNO[4].astype(int))  # 0.05 of 0.2 = 1/4 of the way
    bar = px[6:-6, 2 + 6 + 5]  # the colour bar's middle column, top (vmax) to bottom (0)
    assert tuple(bar[0]) == tuple(_INFERNO[-1].astype(int)) and tuple(bar[-1]) == tuple(
        _INFERNO[0].astype(int)
    )
    assert (px[:, -30:] < 100).any()  # labels are drawn
    fixed = np.asarray(render_heatmap(m, vmax=0.4))
    assert tuple(fixed[1, 1]) == tuple(_INFERNO[8].astype(int))  # 0.2 of 0.4: the middle colour


def test_consensus_is_the_medoid_in_l1_on_luma():
    # distances 0-1: .1, 0-2: .3, 1-2: .2 -> mean distances .2, .15, .25 -> sample 1
    c = consensus_pick([gray(0.0, 0.0), gray(0.1, 0.1), gray(0.3, 0.3)])
    assert c.index == 1 and c.distance == "l1-y"
    np.testing.assert_allclose(c.mean_distances, [0.2, 0.15, 0.25])
    np.testing.assert_allclose(c.distances, [[0, 0.1, 0.3], [0.1, 0, 0.2], [0.3, 0.2, 0]])
    rec = c.as_record()
    assert rec["chosen_sample"] == 1 and rec["mean_distances"] == [0.2, 0.15, 0.25]
    # RGB: the distance is on BT.601 Y, so red counts 65.481/255 and blue 24.966/255
    black, red, blue = (np.zeros((3, 1, 1)) for _ in range(3))
    red[0], blue[2] = 1.0, 1.0
    c = consensus_pick([black, red, blue])
    np.testing.assert_allclose(c.distances[0, 1:], [65.481 / 255, 24.966 / 255], rtol=1e-6)
    assert (
        c.index == 2
    )  # mean distances: black (65.5 + 25.0) / 2, red (65.5 + 40.5) / 2, blue (25.0 + 40.5) / 2
    # ties go to the lowest index; a custom distance function is accepted
    assert consensus_pick([gray(0.5), gray(0.5)]).index == 0
    assert consensus_pick([gray(0.0), gray(1.0), gray(0.9)], distance=lambda s: -np.eye(len(s))).index == 0
    with pytest.raises(ValueError, match="l1-y"):
        consensus_pick([gray(0.0), gray(1.0)], distance="l2")


def test_mean_is_float_and_rounded_once():
    samples = [np.full((3, 1, 1), v / 255) for v in (10.4, 10.4, 10.4, 12.4)]
    m = mean_image(samples)
    np.testing.assert_allclose(m * 255, np.full((3, 1, 1), 10.9))
    assert to_output_pixels(m, gray=False, bit_depth=8)[0, 0].tolist() == [11, 11, 11]
    # rounding each sample first would have given mean(10, 10, 10, 12) = 10.5 -> 10
    u8 = [np.array([[[10]], [[11]], [[13]]], np.uint8).reshape(1, 1, 3)] * 2
    np.testing.assert_allclose(mean_image(u8).ravel() * 255, [10, 11, 13])


def test_lpips_distance_says_what_is_missing_and_works_with_a_trunk_file(tmp_path, monkeypatch):
    pytest.importorskip("lpips")
    torchvision = pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match=r"not available here: .*alexnet.*Use the default distance, l1-y"):
        lpips_distance("alex")
    with pytest.raises(ValueError, match="l1-y"):
        consensus_pick([gray(0.0), gray(1.0)], distance="lpips")
    trunk = tmp_path / "alexnet.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), trunk)
    fn = lpips_distance("alex", str(trunk))
    rng = np.random.default_rng(0)
    base = rng.random((3, 32, 32))
    samples = [base, np.clip(base + 0.02, 0, 1), np.clip(base + 0.04, 0, 1), rng.random((3, 32, 32))]
    c = consensus_pick(samples, distance=fn)
    assert c.distances.shape == (4, 4) and np.allclose(c.distances, c.distances.T)
    assert c.index in (0, 1, 2) and c.mean_distances[3] == max(
        c.mean_distances
    )  # the outlier is never picked
