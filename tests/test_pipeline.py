"""CCSRPipeline end to end on the tiny random model saved in the official layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ccsr.denoiser import denoise
from ccsr.diffusion import add_noise, predict_x0
from ccsr.pipeline import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, CCSRPipeline

PS = 32  # small process_size keeps the tiny model fast


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture()
def counter(tiny_pipe):
    calls = {"unet": [], "controlnet": []}
    hooks = [
        getattr(tiny_pipe, name).register_forward_hook(
            lambda m, a, k, o, name=name: calls[name].append(a[0].shape[0]), with_kwargs=True
        )
        for name in calls
    ]
    yield calls
    for h in hooks:
        h.remove()


def test_output_is_exactly_scale_times_input_for_odd_sizes(tiny_pipe):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (23, 37, 3), dtype=np.uint8))
    for scale, ps in ((4, 128), (2, PS), (1, PS), (3, PS)):
        out = tiny_pipe(im, 1, upscale=scale, process_size=ps, generator=gen(0))
        assert out.images[0].size == (37 * scale, 23 * scale)


def test_same_seed_same_output_different_seeds_differ(tiny_pipe, photo):
    for steps in (1, 2, 4):
        a = tiny_pipe(photo, steps, process_size=PS, generator=gen(1), output_type="pt").images
        b = tiny_pipe(photo, steps, process_size=PS, generator=gen(1), output_type="pt").images
        c = tiny_pipe(photo, steps, process_size=PS, generator=gen(2), output_type="pt").images
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_float16_decode_that_overflows_is_redone_in_float32(tiny_model_dir):
    """The VAE decoder safe in fp16: inf / NaN from a half-precision decode is never returned."""
    from ccsr.pipeline import CCSRPipeline

    pipe = CCSRPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.float16)
    with torch.no_grad():  # activations past float16's 65504 inside the decoder
        pipe.vae.decoder.conv_in.weight.mul_(3e4)
    latents = torch.randn(1, pipe.vae.config.latent_channels, 8, 8, generator=gen(0))
    z = latents / pipe.vae.config.scaling_factor
    with torch.no_grad():
        assert not torch.isfinite(pipe.vae.decode(z.half(), return_dict=False)[0]).all()
        out = pipe._decode(latents)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert pipe.vae.dtype == torch.float16  # put back for the next image
    with torch.no_grad():
        reference = pipe.vae.float().decode(z, return_dict=False)[0].div(2).add(0.5).clamp(0, 1)
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize(
    "steps,guidance,expected",
    [(1, None, (999,)), (2, None, (999, 499)), (3, None, (999, 582, 499)), (2, 1.0, (999, 499))],
)
def test_network_evaluations_follow_the_schedule(tiny_pipe, photo, counter, steps, guidance, expected):
    out = tiny_pipe(photo, steps, guidance_scale=guidance, process_size=PS, generator=gen(0))
    assert out.timesteps == expected and out.num_network_evals == len(expected)
    assert len(counter["unet"]) == len(counter["controlnet"]) == len(expected)
    g = 1.0 if steps == 1 or guidance == 1.0 else 4.5
    # The extraction step runs unguided (batch 1); guided loop steps run cond+uncond as one batch of 2.
    assert counter["unet"] == [1] + [2 if g > 1 else 1] * (len(expected) - 1)


def test_expert_knobs_reproduce_reference_schedules(tiny_pipe, photo):
    out = tiny_pipe(
        photo,
        num_inference_steps=10,
        t_max=0.6667,
        t_min=0.5,
        guidance_scale=1.0,
        process_size=PS,
        generator=gen(0),
    )
    assert out.timesteps == (999, 601, 501)
    out = tiny_pipe(
        photo, num_inference_steps=6, t_min=0.0, guidance_scale=1.0, process_size=PS, generator=gen(0)
    )
    assert out.timesteps == (999, 499, 333, 167, 1)
    with pytest.raises(ValueError, match="num_inference_steps=3, t_max=0.6667, t_min=0.5"):
        tiny_pipe(photo, num_inference_steps=3, t_min=0.5, process_size=PS)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_two_step_matches_the_algorithm_written_out(tiny_pipe, photo, kind):
    """docs/algorithm.md §1.5 step by step: noise, posterior sample, t=999 on the negative prompt, re-noise to 499,
    CFG at 499 (index 0 = negative), x0 read-out. All draws from one generator, in that order.
    The same networks read as v prediction (ccsr-tiny's type) go through the same steps."""
    from diffusers import DDPMScheduler

    p = tiny_pipe
    if kind != "epsilon":
        sched = DDPMScheduler.from_config(p.scheduler.config, prediction_type=kind)
        p = CCSRPipeline(p.unet, p.controlnet, p.vae, p.text_encoder, p.tokenizer, sched)
    out = p(photo, 2, process_size=PS, generator=gen(5), output_type="latent").images

    from ccsr.image import make_canvas, pil_to_tensor, plan_resize

    canvas = pil_to_tensor(make_canvas(photo, plan_resize(photo.size, 4, PS)))
    g = gen(5)
    shape = (1, 4, canvas.shape[2] // 2, canvas.shape[3] // 2)
    noise = torch.randn(shape, generator=g)
    dist = p.vae.encode(canvas * 2 - 1).latent_dist
    z = dist.mean + dist.std * torch.randn(shape, generator=g)
    z = z * p.vae.config.scaling_factor
    ac = p.scheduler.alphas_cumprod
    pos, neg = p.encode_prompt(DEFAULT_PROMPT), p.encode_prompt(DEFAULT_NEGATIVE_PROMPT)
    x = add_noise(z, noise, 999, ac)
    x0 = predict_x0(x, denoise(p.unet, p.controlnet, x, 999, neg, z), 999, ac, kind)
    x = add_noise(x0, torch.randn(shape, generator=g), 499, ac)
    e_neg = denoise(p.unet, p.controlnet, x, 499, neg, z)
    e_pos = denoise(p.unet, p.controlnet, x, 499, pos, z)
    expected = predict_x0(x, e_neg + 4.5 * (e_pos - e_neg), 499, ac, kind)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_initial_prompt_modes(tiny_pipe, photo, counter):
    kw = dict(process_size=PS, output_type="pt")
    ref = tiny_pipe(photo, 2, generator=gen(0), **kw).images
    fixed = tiny_pipe(photo, 2, initial_prompt="positive", generator=gen(0), **kw).images
    cfg = tiny_pipe(photo, 2, initial_prompt="cfg", generator=gen(0), **kw).images
    assert not torch.equal(ref, fixed) and not torch.equal(fixed, cfg)
    assert counter["unet"] == [1, 2, 1, 2, 2, 2]
    # With guidance 1 the reference uses the positive prompt: the option changes nothing.
    a = tiny_pipe(photo, 2, guidance_scale=1.0, generator=gen(0), **kw).images
    b = tiny_pipe(photo, 2, guidance_scale=1.0, initial_prompt="positive", generator=gen(0), **kw).images
    assert torch.equal(a, b)


def test_batch_result_does_not_depend_on_the_batch(tiny_pipe, photo):
    other = photo.transpose(Image.FLIP_LEFT_RIGHT)
    # In float: batched convolutions differ in the last bits, which 8-bit rounding could turn into a level.
    kw = dict(process_size=PS, output_type="pt", postprocess="float")
    alone = tiny_pipe(photo, 2, generator=gen(7), **kw).images
    both = tiny_pipe([other, photo], 2, generator=[gen(8), gen(7)], **kw).images
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)


def test_latents_argument_is_the_initial_noise(tiny_pipe, photo):
    out0 = tiny_pipe(photo, 1, process_size=PS, lr_latent="mode", generator=gen(0), output_type="latent")
    shape = tuple(out0.images.shape)
    noise = torch.randn(shape, generator=gen(11))
    a = tiny_pipe(
        photo, 1, process_size=PS, lr_latent="mode", latents=noise, generator=gen(1), output_type="pt"
    ).images
    b = tiny_pipe(
        photo, 1, process_size=PS, lr_latent="mode", latents=noise, generator=gen(2), output_type="pt"
    ).images
    assert torch.equal(a, b)  # 1 step + posterior mode: the noise is the only randomness
    with pytest.raises(ValueError, match="latents has shape"):
        tiny_pipe(photo, 1, process_size=PS, latents=torch.zeros(1, 4, 8, 8))


def test_output_types(tiny_pipe, photo):
    kw = dict(process_size=PS)
    pil = tiny_pipe(photo, generator=gen(0), **kw).images[0]
    arr = tiny_pipe(photo, output_type="np", generator=gen(0), **kw).images
    pt = tiny_pipe(photo, output_type="pt", generator=gen(0), **kw).images
    lat = tiny_pipe(photo, output_type="latent", generator=gen(0), **kw).images
    assert pil.size == (192, 128) and pil.mode == "RGB"
    assert arr.shape == (1, 128, 192, 3) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    assert pt.shape == (1, 3, 128, 192)
    assert np.abs(np.asarray(pil, dtype=np.float32) / 255 - arr[0]).max() <= 0.5 / 255 + 1e-6
    assert lat.shape == (1, 4, 64, 96)
    images, timesteps, nfe = tiny_pipe(photo, return_dict=False, generator=gen(0), **kw)
    assert timesteps == (999,) and nfe == 1


def test_color_fix_options(tiny_pipe, photo):
    # float: the reference's truncation to 8 bits lowers every mean by ~0.5 / 255 (tests/test_postprocess.py)
    kw = dict(process_size=PS, output_type="pt", postprocess="float")
    outs = {
        c: tiny_pipe(photo, color_fix=c, generator=gen(0), **kw).images for c in ("adain", "wavelet", "none")
    }
    assert not torch.equal(outs["adain"], outs["none"]) and not torch.equal(outs["wavelet"], outs["none"])
    # AdaIN gives the output the colour statistics of the bicubic canvas.
    canvas = photo.resize((192, 128), Image.Resampling.BICUBIC)
    src = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(outs["adain"][0].mean((1, 2)), src.mean((1, 2)), atol=0.01, rtol=0)


def test_tiled_diffusion_and_vae_tiling(tiny_pipe, photo):
    kw = dict(process_size=PS, output_type="pt", postprocess="float")  # float: see the batch test
    full = tiny_pipe(photo, 2, generator=gen(0), **kw).images
    # A tile larger than the image (the reference crashes here, csslc/CCSR#50) equals no tiling.
    one_tile = tiny_pipe(photo, 2, tile_size=512, tile_stride=256, generator=gen(0), **kw).images
    assert torch.equal(full, one_tile)
    tiled = tiny_pipe(photo, 2, tile_size=64, tile_stride=32, tile_batch=3, generator=gen(0), **kw).images
    tiled1 = tiny_pipe(photo, 2, tile_size=64, tile_stride=32, tile_batch=1, generator=gen(0), **kw).images
    assert tiled.shape == full.shape and torch.isfinite(tiled).all()
    torch.testing.assert_close(tiled, tiled1, atol=1e-5, rtol=0)  # batching tiles changes nothing
    vt = tiny_pipe(photo, 2, vae_tiling=True, generator=gen(0), **kw).images
    assert vt.shape == full.shape
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_pipe(photo, tile_size=60, **kw)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=0), "positive integer"),
        (dict(color_fix="magic"), "color_fix"),
        (dict(start_point="middle"), "start_point"),
        (dict(initial_prompt="neg"), "initial_prompt"),
        (dict(output_type="jpg"), "output_type"),
        (dict(upscale=0), "upscale"),
        (dict(guidance_scale=-1), "guidance_scale"),
        (dict(t_max=0.3, t_min=0.5), "t_min=0.5, t_max=0.3"),
    ],
)
def test_invalid_options_raise_value_errors(tiny_pipe, photo, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipe(photo, process_size=PS, **kwargs)


def test_mixed_sizes_and_generator_count(tiny_pipe, photo):
    with pytest.raises(ValueError, match="share a size"):
        tiny_pipe([photo, photo.resize((10, 10))], process_size=PS)
    with pytest.raises(ValueError, match="one per image"):
        tiny_pipe([photo, photo], process_size=PS, generator=[gen(0)])


def test_prompt_embeddings_are_cached(tiny_pipe, photo):
    calls = []
    h = tiny_pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        tiny_pipe.encode_prompt("a prompt not seen before")
        tiny_pipe(photo, 2, prompt="a prompt not seen before", process_size=PS, generator=gen(0))
        tiny_pipe(photo, 2, prompt="a prompt not seen before", process_size=PS, generator=gen(1))
    finally:
        h.remove()
    assert len(calls) <= 2  # the new prompt once, the default negative at most once


def test_bfloat16_runs_on_cpu(tiny_model_dir, photo):
    from ccsr.pipeline import CCSRPipeline

    pipe = CCSRPipeline.from_pretrained(tiny_model_dir, torch_dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.controlnet.dtype == torch.bfloat16
    out = pipe(photo, 2, process_size=PS, generator=gen(0), output_type="pt").images
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "options",
    [
        dict(channels_last=True),
        dict(compile=True, compile_backend="aot_eager"),  # dynamo + AOT autograd tracing, no C++ build
        pytest.param(dict(compile=True), marks=pytest.mark.slow),  # inductor: ~4 min on a 2-core CPU
    ],
    ids=["channels_last", "compile-aot_eager", "compile-inductor"],
)
def test_speed_options_keep_the_output(tiny_model_dir, photo, options):
    """channels_last and torch.compile change how the networks run, not what the pipeline computes."""
    ref = CCSRPipeline.from_pretrained(tiny_model_dir)
    kw = dict(process_size=PS, output_type="pt", postprocess="float")  # float: 8 bits would round the ulps
    expected = ref(photo, 2, generator=gen(1), **kw).images
    fast = CCSRPipeline.from_pretrained(tiny_model_dir).optimize(**options)
    if options.get("channels_last"):
        assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert fast.vae.decoder.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    else:
        assert (
            fast.unet._compiled_call_impl is not None and type(fast.unet).__name__ == "UNet2DConditionModel"
        )
    out = fast(photo, 2, generator=gen(1), **kw).images
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=0)
