"""Pure units: resize plan, colour fixes, tiling, and the cheap-import rule."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ccsr.color import adain_color_fix, apply_color_fix, wavelet_color_fix, wavelet_decompose
from ccsr.diffusion import add_noise, predict_x0
from ccsr.image import make_canvas, plan_resize, resize_float
from ccsr.tiling import gaussian_weights, tile_starts, tile_windows, tiled_apply


# ---------------------------------------------------------------- resize plan (docs/algorithm.md §1.3)
def test_plan_examples():
    p = plan_resize((128, 128), 4, 512)
    assert (p.canvas_size, p.output_size) == ((512, 512), (512, 512))
    p = plan_resize((37, 23), 4, 512)  # small: short side 23 -> 128
    assert p.enlarged_size == (206, 128) and p.upscaled_size == (824, 512)
    assert p.canvas_size == (824, 512) and p.output_size == (148, 92)
    p = plan_resize((1000, 301), 4, 512)  # large: never shrunk
    assert p.enlarged_size == (1000, 301) and p.canvas_size == (4000, 1200)
    p = plan_resize((130, 131), 1, 0)
    assert p.canvas_size == (128, 128) and p.output_size == (130, 131)


def test_plan_errors():
    with pytest.raises(ValueError, match="upscale"):
        plan_resize((10, 10), 0)
    with pytest.raises(ValueError, match="smaller than 8"):
        plan_resize((3, 3), 2, 0)
    with pytest.raises(ValueError, match="empty"):
        plan_resize((0, 5), 4)


def test_canvas_uses_pil_bicubic_twice():
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (21, 30, 3), dtype=np.uint8))
    plan = plan_resize(im.size, 3, 0)
    ref = im.resize((90, 63), Image.Resampling.BICUBIC).resize((88, 56), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(make_canvas(im, plan)), np.asarray(ref))


@pytest.mark.parametrize("size", [(30, 20), (20, 30), (50, 40), (24, 10)])
def test_resize_float_matches_pil_up_to_quantisation(size):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)  # noise: many overshoots to clip
    t = torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)[None]
    out = resize_float(t, size)[0].permute(1, 2, 0).numpy()
    ref = np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255
    # PIL rounds its 8-bit intermediate and result: at most one level apart, half a level on average.
    assert np.abs(out.clip(0, 1) - ref).max() <= 1.5 / 255
    assert np.abs(out.clip(0, 1) - ref).mean() <= 0.4 / 255


# ---------------------------------------------------------------- colour fix (docs/algorithm.md §1.9)
def test_adain_matches_source_statistics():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 32, 32, generator=g) * 0.5
    source = torch.rand(1, 3, 32, 32, generator=g) * 0.3 + 0.4
    out = adain_color_fix(target, source)
    torch.testing.assert_close(out.mean((2, 3)), source.mean((2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std((2, 3)), source.std((2, 3)), atol=2e-3, rtol=0)


def test_wavelet_decomposition_is_exact_and_fix_keeps_target_detail():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 40, 40, generator=g)
    high, low = wavelet_decompose(x)
    torch.testing.assert_close(high + low, x)
    flat = torch.full((1, 3, 40, 40), 0.25)
    out = wavelet_color_fix(x, flat)  # flat source: low band 0.25, detail from x
    torch.testing.assert_close(out, (high + 0.25).clamp(0, 1))
    assert torch.equal(wavelet_color_fix(flat, flat), flat)


def test_color_fix_dispatch():
    x = torch.rand(1, 3, 8, 8) * 1.2
    assert torch.equal(apply_color_fix(x, x, "none"), x.clamp(0, 1))
    with pytest.raises(ValueError, match="color_fix"):
        apply_color_fix(x, x, "hist")


def test_wavelet_levels_choose_how_much_comes_from_the_output():
    gen = torch.Generator().manual_seed(0)
    x, src = torch.rand(1, 3, 40, 40, generator=gen), torch.rand(1, 3, 40, 40, generator=gen)
    assert torch.equal(apply_color_fix(x, src, "wavelet"), wavelet_color_fix(x, src, 5))  # the authors'
    three = apply_color_fix(x, src, "wavelet", 3)
    assert torch.equal(three, wavelet_color_fix(x, src, 3))
    # fewer levels keep fewer of the output's bands: the result moves towards the source
    far = [(wavelet_color_fix(x, src, k) - src).abs().mean().item() for k in (1, 3, 5)]
    assert far[0] < far[1] < far[2], far
    assert torch.equal(apply_color_fix(x, src, "adain", 3), apply_color_fix(x, src, "adain"))
    for bad in (0, 11, True, 2.0):
        with pytest.raises(ValueError, match=r"wavelet_levels=.* must be an integer from 1 to 10"):
            apply_color_fix(x, src, "wavelet", bad)


# ---------------------------------------------------------------- diffusion maths
def test_add_noise_and_predict_x0_invert_each_other():
    from diffusers import DDPMScheduler

    from ccsr.models.tiny import SD21_SCHEDULER

    sched = DDPMScheduler.from_config(SD21_SCHEDULER)
    ac = sched.alphas_cumprod
    assert abs(ac[999].sqrt().item() - 0.0683) < 1e-4 and abs(ac[499].item() - 0.27767) < 1e-4
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in (999, 667, 1, torch.tensor([999, 3])):
        xt = add_noise(x0, eps, t, ac)
        torch.testing.assert_close(predict_x0(xt, eps, t, ac), x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(
        add_noise(x0, eps, torch.tensor([5, 5]), ac), sched.add_noise(x0, eps, torch.tensor([5, 5]))
    )


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_training_target_and_predict_x0_agree_for_every_prediction_type(kind):
    from diffusers import DDPMScheduler

    from ccsr.diffusion import training_target
    from ccsr.models.tiny import SD21_SCHEDULER

    sched = DDPMScheduler.from_config({**SD21_SCHEDULER, "prediction_type": kind})
    ac = sched.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in (999, 499, 1, torch.tensor([999, 3])):
        xt = add_noise(x0, eps, t, ac)
        target = training_target(x0, eps, t, ac, kind)
        torch.testing.assert_close(predict_x0(xt, target, t, ac, kind), x0, atol=2e-4, rtol=1e-4)
    t = torch.tensor([999, 250])
    if kind == "v_prediction":  # diffusers' own definition of v
        torch.testing.assert_close(training_target(x0, eps, t, ac, kind), sched.get_velocity(x0, eps, t))
    # One DDPM step from the exact target lands where diffusers' step does from the exact target.
    sched.set_timesteps(10)
    t = int(sched.timesteps[4])  # 501 on SD's leading grid
    xt = add_noise(x0, eps, t, ac)
    target = training_target(x0, eps, t, ac, kind)
    step = sched.step(target, t, xt, generator=torch.Generator().manual_seed(1))
    ref = DDPMScheduler.from_config(SD21_SCHEDULER)
    ref.set_timesteps(10)
    expected = ref.step(eps, t, xt, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(step.prev_sample, expected.prev_sample, atol=2e-4, rtol=1e-4)


def test_unknown_prediction_type_is_named():
    from ccsr.diffusion import training_target

    x = torch.zeros(1, 4, 2, 2)
    ac = torch.linspace(0.99, 0.01, 1000)
    with pytest.raises(ValueError, match="prediction_type='flow'.*epsilon, v_prediction, sample"):
        predict_x0(x, x, 5, ac, "flow")
    with pytest.raises(ValueError, match="prediction_type='flow'"):
        training_target(x, x, 5, ac, "flow")


# ---------------------------------------------------------------- tiling (docs/algorithm.md §1.11)
@pytest.mark.parametrize(
    "length,tile,stride", [(100, 64, 32), (64, 64, 32), (20, 64, 32), (97, 16, 16), (65, 64, 1)]
)
def test_tile_starts_cover_everything(length, tile, stride):
    starts = tile_starts(length, tile, stride)
    t = min(tile, length)
    covered = set()
    for s in starts:
        assert 0 <= s <= length - t
        covered.update(range(s, s + t))
    assert covered == set(range(length))


def test_tiling_errors():
    with pytest.raises(ValueError, match="stride"):
        tile_starts(100, 16, 32)


def test_gaussian_weights_symmetric_and_positive():
    w = gaussian_weights(16, 24)
    assert torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1)) and (w > 0).all()


def test_tiled_apply_pointwise_equals_untiled_and_small_inputs_work():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 4, 40, 50, generator=g), torch.randn(2, 4, 40, 50, generator=g)

    def fn(a, b):
        return a * 2 + b

    for tile, stride, bt in ((16, 8, 1), (16, 8, 4), (32, 16, 2), (64, 32, 1)):
        torch.testing.assert_close(tiled_apply(fn, x, c, tile, stride, bt), fn(x, c))
    assert len(tile_windows(40, 50, 64, 32)) == 1


# ---------------------------------------------------------------- cheap imports
def test_light_modules_do_not_import_diffusers_or_licensed_backends():
    code = (
        "import sys, ccsr, ccsr.schedule, ccsr.cli, ccsr.image, ccsr.tiling, ccsr.color\n"
        "bad = [m for m in ('diffusers', 'transformers', 'pyiqa', 'basicsr') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    code = "import sys, ccsr.pipeline; sys.exit(1 if ('pyiqa' in sys.modules or 'basicsr' in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
