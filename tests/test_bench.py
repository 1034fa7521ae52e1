"""``ccsr bench`` on ccsr-tiny at a small size: the JSON's structure and sanity (never its times), the stage
timer leaving the pipeline as it was, and the speed options' outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ccsr.bench.stages import NETWORK_STAGES, STAGES, StageTimer
from ccsr.cli import main


def _bench(capsys, *args: str) -> dict:
    assert main(["bench", "--model", "tiny", "--device", "cpu", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_json_stages_flops_and_folder_comparison(capsys):
    args = ["--size", "16", "64", "--steps", "1", "2", "--repeats", "1", "--warmup", "1", "--images", "2"]
    res = _bench(capsys, *args)
    assert res["machine"]["cpu_count"] >= 1 and res["settings"]["precision"] == "fp32"
    assert res["peak_memory"]["gib"] > 0
    s1, s2 = res["runs"]
    assert (s1["steps"], s1["network_evals"], s2["network_evals"]) == (1, 1, 2)
    assert s1["input"] == [16, 16] and s1["output"] == [64, 64]
    for run in (s1, s2):
        stages = run["stages"]
        assert list(stages) == [*STAGES, "other"]
        # every stage ran where it should: the prompt is cached after the warm-up, the VAE runs once
        calls = {k: v["calls"] for k, v in stages.items()}
        assert calls["prompt"] == 0 and calls["encode"] == calls["decode"] == calls["png encode"] == 1
        assert calls["unet"] == calls["controlnet"] == run["network_evals"]
        assert run["prompt_first_call_s"] > 0
        assert all(stages[s]["median"] > 0 for s in ("encode", "controlnet", "unet", "decode", "png encode"))
        # the stages add up to the timed image; what no stage covers ("other") is a small, non-negative rest
        total = sum(v["median"] for v in stages.values())
        assert total == pytest.approx(run["staged_total_s"]["median"], rel=1e-3, abs=1e-5)
        assert -1e-4 <= stages["other"]["median"] < 0.5 * total
        assert run["flops"]["networks_per_image"] == sum(
            v for k, v in run["flops"]["per_stage"].items() if k != "prompt"
        )
        assert all(run["flops"]["per_stage"][s] > 0 for s in NETWORK_STAGES)
        assert run["tflops_per_s"]["networks"] > 0
        assert run["folder"]["images"] == 2 and run["folder"]["images_per_s"] > 0
        assert "%" in run["verdict"]
    # S2: 2 evaluations, the second with classifier-free guidance (batch 2): 3x the UNet work of S1
    assert s2["flops"]["per_stage"]["unet"] == 3 * s1["flops"]["per_stage"]["unet"]
    assert s2["flops"]["per_stage"]["encode"] == s1["flops"]["per_stage"]["encode"]
    # the real `ccsr upscale` (a subprocess) over the same files makes the same images
    args = ["--size", "16", "64", "--repeats", "1", "--images", "2", "--no-flops"]
    up = _bench(capsys, *args, "--compare-upscale", "--workers", "0")["runs"][0]["upscale"]
    assert up["rc"] == 0 and up["images"] == 2, up
    assert up["same_outputs_as_bare_loop"] is True
    assert up["process_start_s"] > 0 and up["model_load_s"] > 0 and up["ratio_to_bare_loop"] > 0
    assert "--workers 0" in up["command"]


def test_bench_text_and_refusals(capsys):
    assert (
        main(
            [
                "bench",
                "--model",
                "tiny",
                "--size",
                "16",
                "64",
                "--repeats",
                "1",
                "--images",
                "0",
                "--no-flops",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "verdict:" in out and "png encode" in out and "16x16 -> 64x64" in out
    assert main(["bench", "--model", "tiny", "--size", "30", "100"]) == 2
    assert "multiple of the input side" in capsys.readouterr().err
    assert main(["bench", "--model", "/nonexistent/model"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_stage_timer_changes_nothing_and_detaches(tiny_pipe, photo):
    import ccsr.color as module

    def run():
        gen = torch.Generator().manual_seed(0)
        return tiny_pipe(photo, upscale=2, process_size=0, output_type="np", generator=gen).images

    plain = run()
    original = module.apply_color_fix
    timer = StageTimer(tiny_pipe, torch.device("cpu"))
    with timer.patched():
        assert module.apply_color_fix is not original
        timed = run()
    assert module.apply_color_fix is original
    assert np.array_equal(plain, timed)
    assert timer.calls["unet"] == 1 and timer.seconds["decode"] > 0
    timer.detach()
    assert not tiny_pipe.unet._forward_hooks and not tiny_pipe.unet._forward_pre_hooks
    assert "encode" not in tiny_pipe.vae.__dict__
    assert np.array_equal(plain, run())


@pytest.mark.parametrize("choice", ["flash", "efficient", "math"])
def test_sdpa_choice_keeps_the_output(tiny_pipe, photo, choice):
    """Preferring an attention kernel changes float rounding at most (documented tolerance 1e-5 in fp32;
    compared before any 8-bit rounding, which a 1e-7 change can flip by one level)."""
    from ccsr.bench.setup import sdpa_context

    def run():
        gen = torch.Generator().manual_seed(0)
        kw = dict(upscale=2, process_size=0, output_type="np", postprocess="float")
        return tiny_pipe(photo, generator=gen, **kw).images

    plain = run()
    with sdpa_context(choice):
        chosen = run()
    np.testing.assert_allclose(chosen, plain, atol=1e-5)


def test_remembered_device_and_dtype_follow_the_weights():
    """The pipeline's cheap ``_execution_device`` and :func:`module_dtype` answer as diffusers' own do."""
    from diffusers import DiffusionPipeline

    from ccsr.denoiser import module_dtype
    from ccsr.models.tiny import build_tiny_components
    from ccsr.pipeline import CCSRPipeline

    pipe = CCSRPipeline(*build_tiny_components())
    assert pipe._execution_device == DiffusionPipeline._execution_device.fget(pipe) == torch.device("cpu")
    assert module_dtype(pipe.vae) == pipe.vae.dtype == torch.float32
    pipe.vae.to(torch.bfloat16)
    assert module_dtype(pipe.vae) == torch.bfloat16
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert module_dtype(pipe.unet) == pipe.unet.dtype == torch.float32
    pipe.to("meta")
    assert pipe._execution_device == DiffusionPipeline._execution_device.fget(pipe) == torch.device("meta")


def test_uint8_quantisation_where_the_tensor_is_matches_the_host_float_path():
    """tensor_to_uint8 rounds on the tensor's device (one uint8 copy from a GPU): same bits as the former
    host path (float32 copy, then NumPy), ties included."""
    from ccsr.image import tensor_to_uint8

    k = torch.arange(256, dtype=torch.float32)
    edges = torch.cat(
        [k / 255, (k + 0.5) / 255, (k + 0.5) / 255 - 1e-7, torch.rand(4096), torch.tensor([-0.1, 1.2])]
    )
    x = torch.cat([edges, torch.rand(3 * 32 * 51 - edges.numel())]).reshape(1, 3, 32, 51)
    ref = (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    assert np.array_equal(tensor_to_uint8(x), ref)
    assert np.array_equal(tensor_to_uint8(x.to(torch.float64)), ref)


def test_bench_leaves_the_callers_grad_mode_alone(capsys):
    """A library call must not switch autograd off for the rest of the process (training after a bench)."""
    assert torch.is_grad_enabled()
    _bench(capsys, "--size", "16", "64", "--repeats", "1", "--warmup", "0", "--images", "0", "--no-flops")
    assert torch.is_grad_enabled()
