"""G-STD and L-STD as pure functions, with expectations worked out by hand (docs/algorithm.md §5.2-5.3)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from ccsr.metrics.stability import crop_border, g_std, l_std, l_std_map, per_image_std


def test_g_std_identical_samples_is_zero():
    scores = torch.tensor([[25.1, 30.2, 27.7]]).repeat(5, 1)
    assert g_std(scores).item() == 0.0


def test_g_std_two_samples_differing_by_c_is_half_c():
    base = torch.tensor([25.0, 31.5, 0.25], dtype=torch.float64)
    c = 0.75
    scores = torch.stack([base, base + c])
    assert per_image_std(scores).tolist() == [c / 2] * 3
    assert g_std(scores).item() == c / 2


def test_g_std_worked_example_and_population_std():
    # image 0 over samples: (1, 3) -> std 1; image 1: (2, 6) -> std 2; mean 1.5
    assert g_std(torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=torch.float64)).item() == 1.5
    # ddof 0: three samples 0, 1, 2 have population std sqrt(2/3) (ddof 1 would give 1)
    assert math.isclose(
        g_std(torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)).item(), math.sqrt(2 / 3)
    )


def test_g_std_matches_numpy_population_std_on_random_scores():
    m = np.random.default_rng(0).normal(size=(10, 7))
    assert math.isclose(g_std(m).item(), float(np.std(m, axis=0).mean()), rel_tol=1e-12)


def test_g_std_single_sample_is_zero_and_bad_input_is_refused():
    assert g_std(torch.tensor([[1.0, 2.0]])).item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        g_std(torch.ones(3))
    with pytest.raises(ValueError, match=r"non-finite value at \(sample, image\) = \(1, 0\)"):
        g_std(torch.tensor([[1.0, 2.0], [float("nan"), 2.0]]))


def test_l_std_identical_samples_is_zero():
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0)).repeat(4, 1, 1, 1)
    assert l_std(x).item() == 0.0
    assert torch.count_nonzero(l_std_map(x)) == 0


def test_l_std_two_samples_differing_by_c_is_half_c():
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.5
    c = 0.2
    pair = torch.stack([x, x + c])
    assert math.isclose(l_std(pair).item(), c / 2, rel_tol=1e-12)
    assert torch.allclose(l_std_map(pair), torch.full((8, 8), c / 2, dtype=torch.float64))


def test_l_std_ddof0_over_three_samples():
    # per pixel the samples are 0, 0.1, 0.2 -> population std 0.1 * sqrt(2/3)
    x = torch.stack([torch.full((3, 10, 10), v, dtype=torch.float64) for v in (0.0, 0.1, 0.2)])
    assert math.isclose(l_std(x, crop=0).item(), 0.1 * math.sqrt(2 / 3), rel_tol=1e-12)


def test_l_std_crop_removes_the_border_only():
    x = torch.zeros(2, 3, 20, 20, dtype=torch.float64)
    x[1, :, :4, :] = 1.0  # the samples differ only in the top 4 rows
    assert l_std(x, crop=4).item() == 0.0
    # without the crop: 4 of 20 rows have std 0.5
    assert math.isclose(l_std(x, crop=0).item(), 0.5 * 4 / 20, rel_tol=1e-12)
    assert l_std_map(x, crop=4).shape == (12, 12)


def test_l_std_map_mean_is_l_std_with_channels_averaged():
    x = torch.rand(5, 3, 18, 22, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = np.std(x.numpy()[:, :, 4:-4, 4:-4], axis=0)  # (3, 10, 14), ddof 0
    assert np.allclose(l_std_map(x).numpy(), ref.mean(axis=0), atol=1e-12)
    assert math.isclose(l_std(x).item(), float(ref.mean()), rel_tol=1e-12)


def test_l_std_refuses_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        l_std(torch.full((2, 3, 16, 16), 128.0))
    with pytest.raises(ValueError, match="too small"):
        l_std(torch.zeros(2, 3, 8, 30))
    with pytest.raises(ValueError, match="shape"):
        l_std(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="non-negative"):
        crop_border(torch.zeros(1, 3, 16, 16), -1)


def test_stability_module_imports_no_heavy_library():
    code = (
        "import sys, ccsr.metrics.stability; "
        "heavy = [m for m in ('pyiqa', 'diffusers', 'transformers', 'matplotlib') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
