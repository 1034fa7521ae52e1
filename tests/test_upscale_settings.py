"""What a folder run resolves once, before the model loads (``ccsr.upscale.settings``, ``ccsr.upscale.plan``):
the settings JSON that is hashed into every manifest line and recorded in run.json keeps its keys and values
(so run folders made before still resume), the pipeline gets exactly the recorded values under its own
parameter names, and the resize plan the size limits made from each header reaches the jobs."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from ccsr.image import plan_resize
from ccsr.io import read_image
from ccsr.pipeline import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, CCSRPipeline
from ccsr.schedule import preset_for_steps
from ccsr.upscale.config import UpscaleConfig
from ccsr.upscale.discovery import InputError
from ccsr.upscale.loop import _canvas_size
from ccsr.upscale.manifest import settings_hash
from ccsr.upscale.plan import discover_inputs, plan_jobs, scan_inputs
from ccsr.upscale.settings import PIPELINE_KEYS, TileSettings, resolve_settings

#: A model folder's inference_defaults.json.
RECOMMENDED = {
    "color_fix": "wavelet",
    "postprocess": "reference",
    "tile_window": "symmetric",
    "border_pad": 16,
    "wavelet_levels": 3,
}


def _cfg(**kw) -> UpscaleConfig:
    return UpscaleConfig(inputs=("in",), output="out", model="tiny", **kw)


def test_recorded_settings_keep_their_keys_values_and_hash():
    cfg = _cfg(steps=(2,), samples=2, select="consensus", output_format="webp", quality=80, tile_size=256)
    settings = resolve_settings(cfg, 2, {"unet": "ab12"}, "fp32", RECOMMENDED)
    preset = preset_for_steps(2)
    # run.json's "settings", key for key and in this order, as folder runs have always recorded them
    expected = {
        "model": {"unet": "ab12"},
        "steps": 2,
        "num_inference_steps": preset.num_inference_steps,
        "t_max": preset.t_max,
        "t_min": preset.t_min,
        "guidance_scale": preset.guidance_scale,
        "start_timestep": 999,
        "start_point": "lr",
        "prompt": DEFAULT_PROMPT,
        "negative_prompt": DEFAULT_NEGATIVE_PROMPT,
        "scale": 4,
        "process_size": 512,
        "color_fix": "wavelet",
        "postprocess": "reference",
        "tile_window": "symmetric",
        "border_pad": 16,
        "wavelet_levels": 3,
        "precision": "fp32",
        "tiling": {
            "latent": "auto",
            "vae": "auto",
            "tile_size": 256,
            "tile_stride": 256,
            "tile_batch": 1,
            "threshold": 1024 * 1024,
        },
        "format": "webp",
        "quality": 80,
        "frames": "all",
        "select": {"mode": "consensus", "samples": 2, "distance": "l1-y"},
    }
    assert settings.as_dict() == expected
    assert list(settings.as_dict()) == list(expected)
    assert settings.hash == settings_hash(expected)

    # without --select the key is absent (other runs keep their hash); given options win over the model's
    plain = resolve_settings(_cfg(color_fix="adain"), 1, {}, "fp16", RECOMMENDED)
    assert "select" not in plain.as_dict()
    assert (plain.color_fix, plain.quality, plain.guidance_scale) == ("adain", None, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.steps = 3  # type: ignore[misc]
    plain.as_dict()["model"]["unet"] = "changed"  # a copy: the settings and their hash stay
    assert plain.model == {} and plain.hash == settings_hash(plain.as_dict())

    # the authors' 5 wavelet levels are not recorded, so that run folders of earlier versions keep their hash
    five = resolve_settings(_cfg(wavelet_levels=5), 1, {}, "fp32", RECOMMENDED)
    assert five.wavelet_levels == 5 and "wavelet_levels" not in five.as_dict()
    assert five.pipeline_kwargs(8)["wavelet_levels"] == 5


def test_a_schedule_the_reference_would_crash_on_is_refused_naming_the_step_count():
    with pytest.raises(InputError, match=r"steps 2: need 0 <= t_min < t_max <= 1"):
        resolve_settings(_cfg(steps=(2,), t_max=0.4, t_min=0.5), 2, {}, "fp32", RECOMMENDED)


def test_the_pipeline_gets_the_recorded_values_under_its_own_parameter_names():
    settings = resolve_settings(_cfg(tile_batch=3), 1, {}, "fp32", RECOMMENDED)
    recorded = settings.as_dict()
    eight, sixteen = settings.pipeline_kwargs(8), settings.pipeline_kwargs(16)
    assert set(eight) <= set(inspect.signature(CCSRPipeline.__call__).parameters)
    assert all(eight[k] == recorded[k] for k in PIPELINE_KEYS)
    assert (eight["upscale"], eight["tile_batch"]) == (recorded["scale"], 3)
    # the authors' post-processing is 8-bit: a 16-bit input goes through the float path
    assert (eight["postprocess"], sixteen["postprocess"]) == ("reference", "float")


def test_tiling_is_decided_by_the_canvas_size():
    auto = TileSettings.of(_cfg(tile_threshold=100))
    assert auto.for_canvas((10, 10)) == (False, False)
    assert auto.for_canvas((10, 11)) == (True, True)
    assert TileSettings.of(_cfg(tiling="on", vae_tiling="off")).for_canvas((8, 8)) == (True, False)


def test_the_resize_plan_made_for_the_size_limits_reaches_every_job(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(src / "a.png")
    frames = [Image.fromarray(np.full((8, 12, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(src / "b.gif", save_all=True, append_images=frames[1:], duration=50)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src / "big.png")  # 160x160 output: over the limit
    cfg = UpscaleConfig(
        inputs=(str(src),),
        output=str(tmp_path / "out"),
        model="tiny",
        process_size=64,
        max_output_pixels=25_599,
    )
    found, runs = discover_inputs(cfg)
    scan = scan_inputs(cfg, found, runs)
    assert [f.path.name for f in scan.files] == ["a.png", "b.gif"]
    assert [f.input for f in scan.failures] == [str(src / "big.png")]
    jobs, _, _ = plan_jobs(cfg, torch.device("cpu"), scan)
    small = plan_resize((12, 8), 4, 64)  # enlarged to the process size: a 96x64 canvas
    assert {(j.file.path.name, j.frame): j.plan for j in jobs} == {
        ("a.png", 0): plan_resize((24, 16), 4, 64),
        ("b.gif", 0): small,
        ("b.gif", 1): small,
    }
    assert small.canvas_size == (96, 64)


def test_the_canvas_is_planned_again_when_the_decoded_image_is_turned(tmp_path):
    """A PNG's EXIF may follow its pixel data, so the size limits take it as stored; the decoder turns it."""
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn
    Image.fromarray(np.zeros((8, 40, 3), np.uint8)).save(tmp_path / "t.png", exif=exif.tobytes())
    cfg = UpscaleConfig(inputs=(str(tmp_path / "t.png"),), output=str(tmp_path / "out"), model="tiny")
    found, runs = discover_inputs(cfg)
    jobs, _, _ = plan_jobs(cfg, torch.device("cpu"), scan_inputs(cfg, found, runs))
    image = read_image(tmp_path / "t.png", cfg.max_pixels)
    assert jobs[0].plan is not None and jobs[0].plan.input_size == (40, 8) and image.size == (8, 40)
    settings = runs[0].resolved
    assert _canvas_size(jobs[0], image, settings) == plan_resize((8, 40), 4, 512).canvas_size
