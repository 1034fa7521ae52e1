"""Loading the release layouts strictly, and failing clearly on bad folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ccsr.models.controlnet import (
    DISK_PREFIX,
    WEIGHTS_NAME,
    build_latent_controlnet,
    is_latent_controlnet,
    load_ccsr_controlnet,
    save_ccsr_controlnet,
)
from ccsr.models.loading import (
    INFERENCE_DEFAULTS,
    load_components,
    recommended_border_pad,
    recommended_color_fix,
    recommended_settings,
    resolve_paths,
    write_inference_defaults,
)
from ccsr.pipeline import CCSRPipeline


def _copy(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def test_controlnet_folder_is_written_like_the_authors(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "controlnet" / "config.json").read_text())
    assert cfg["_class_name"] == "ControlNetModel" and cfg["use_vae_encode_condition"] is True
    keys = set(load_file(tiny_model_dir / "controlnet" / WEIGHTS_NAME))
    assert {DISK_PREFIX + "weight", DISK_PREFIX + "bias"} <= keys
    assert not any(k.startswith("controlnet_cond_embedding") for k in keys)


def test_official_and_single_layouts_load_the_same_model(tiny_model_dir, tiny_single_dir, tiny_components):
    a = load_components(tiny_model_dir)
    b = load_components(tiny_single_dir)
    assert a.paths.unet.parent.name == "stable-diffusion-2-1-base"
    assert a.paths.vae == tiny_model_dir / "vae"  # CCSR's fine-tuned VAE, not SD's
    ref = tiny_components[1].state_dict()
    for comp in (a, b):
        assert is_latent_controlnet(comp.controlnet)
        sd = comp.controlnet.state_dict()
        assert sd.keys() == ref.keys()
        assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_round_trip_is_bit_identical(tiny_pipe, tmp_path, photo):
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    before = tiny_pipe(photo, 2, process_size=32, generator=gen(), output_type="pt").images
    tiny_pipe.save_pretrained(tmp_path / "saved")
    again = CCSRPipeline.from_pretrained(tmp_path / "saved")
    after = again(photo, 2, process_size=32, generator=gen(), output_type="pt").images
    assert torch.equal(before, after)
    for name in ("unet", "vae", "controlnet", "text_encoder"):
        s1, s2 = getattr(tiny_pipe, name).state_dict(), getattr(again, name).state_dict()
        assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_component_overrides(tiny_model_dir, tiny_single_dir, tmp_path):
    paths = resolve_paths(
        tmp_path, base=tiny_single_dir, controlnet=tiny_model_dir / "controlnet", vae=tiny_model_dir
    )
    assert paths.controlnet == tiny_model_dir / "controlnet" and paths.vae == tiny_model_dir / "vae"
    assert paths.unet == tiny_single_dir / "unet"


def test_missing_weight_file_names_folder_and_file(tiny_model_dir, tmp_path):
    root = _copy(tiny_model_dir, tmp_path)
    (root / "controlnet" / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=r"controlnet.*diffusion_pytorch_model\.safetensors"):
        load_components(root)
    shutil.rmtree(root / "stable-diffusion-2-1-base" / "unet")
    with pytest.raises(FileNotFoundError, match=r"unet.*config\.json not found.*csslc/CCSR"):
        load_components(root)


def test_missing_folder_and_bad_repo(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_paths(tmp_path / "nope" / "deeper")
    with pytest.raises(FileNotFoundError, match="could not be fetched"):
        resolve_paths("no-such-user/no-such-ccsr-repo")  # HF_HUB_OFFLINE=1 in tests


def test_config_without_vae_condition_flag_is_refused(tiny_model_dir, tmp_path):
    root = _copy(tiny_model_dir, tmp_path)
    cfg_path = root / "controlnet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["use_vae_encode_condition"]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_vae_encode_condition"):
        load_ccsr_controlnet(root / "controlnet")


def test_float16_controlnet_file_loads_in_the_dtype_asked_for(tiny_model_dir, tmp_path):
    """A release stored in float16 (ccsr-tiny's) is upcast, not handed back in the file's dtype."""
    root = _copy(tiny_model_dir, tmp_path)
    wpath = root / "controlnet" / WEIGHTS_NAME
    stored = load_file(wpath)
    save_file({k: v.half() for k, v in stored.items()}, wpath)
    for dtype in (torch.float32, torch.bfloat16):
        model = load_ccsr_controlnet(root / "controlnet", torch_dtype=dtype)
        assert {p.dtype for p in model.parameters()} == {dtype}
    assert {p.dtype for p in load_ccsr_controlnet(root / "controlnet").parameters()} == {torch.float16}


def test_mismatched_weights_are_refused(tiny_model_dir, tmp_path):
    root = _copy(tiny_model_dir, tmp_path)
    wpath = root / "controlnet" / WEIGHTS_NAME
    state = load_file(wpath)
    state["condition_conv_in.weight"] = torch.zeros(3, 4, 3, 3)
    save_file(state, wpath)
    with pytest.raises(ValueError, match=r"condition_conv_in\.weight has shape \(3, 4, 3, 3\)"):
        load_ccsr_controlnet(root / "controlnet")
    state.pop("condition_conv_in.weight")
    state["controlnet_cond_embedding.blocks.0.weight"] = torch.zeros(1)
    save_file(state, wpath)
    with pytest.raises(ValueError, match="1 missing.*1 unexpected.*not a CCSR ControlNet"):
        load_ccsr_controlnet(root / "controlnet")


def test_corrupt_weights_are_refused(tiny_model_dir, tmp_path):
    root = _copy(tiny_model_dir, tmp_path)
    wpath = root / "controlnet" / WEIGHTS_NAME
    wpath.write_bytes(wpath.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_ccsr_controlnet(root / "controlnet")


def test_pickled_weights_need_opt_in(tiny_components, tmp_path):
    folder = save_ccsr_controlnet(tiny_components[1], tmp_path / "controlnet")
    state = load_file(folder / WEIGHTS_NAME)
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_ccsr_controlnet(folder)
    model = load_ccsr_controlnet(folder, allow_pickle=True)
    assert torch.equal(model.controlnet_cond_embedding.conv.weight, state["condition_conv_in.weight"])


def test_prediction_type_comes_from_the_scheduler_config(tiny_single_dir, tmp_path):
    root = _copy(tiny_single_dir, tmp_path)
    p = root / "scheduler" / "scheduler_config.json"
    cfg = json.loads(p.read_text())
    cfg["prediction_type"] = "v_prediction"  # ccsr-tiny's; the official weights are epsilon
    p.write_text(json.dumps(cfg))
    assert load_components(root).scheduler.config.prediction_type == "v_prediction"
    cfg["prediction_type"] = "flow"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"scheduler_config.json: prediction_type='flow' is not one of"):
        load_components(root)


def test_a_model_folder_recommends_its_colour_fix(tiny_single_dir, tmp_path, photo):
    root = _copy(tiny_single_dir, tmp_path)
    pipe = CCSRPipeline.from_pretrained(root)
    assert recommended_color_fix(root) == pipe.default_color_fix == "adain"  # no file: the reference's

    write_inference_defaults(root, "wavelet")
    pipe = CCSRPipeline.from_pretrained(root)
    assert pipe.default_color_fix == "wavelet"
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    out = {
        c: pipe(photo, process_size=32, color_fix=c, generator=gen(), output_type="pt").images
        for c in (None, "wavelet", "adain")
    }
    assert torch.equal(out[None], out["wavelet"]) and not torch.equal(out[None], out["adain"])

    pipe.save_pretrained(tmp_path / "saved")  # the recommendation travels with the model
    assert json.loads((tmp_path / "saved" / INFERENCE_DEFAULTS).read_text()) == {"color_fix": "wavelet"}
    assert CCSRPipeline.from_pretrained(tmp_path / "saved").default_color_fix == "wavelet"

    (root / INFERENCE_DEFAULTS).write_text('{"color_fix": "sepia"}')
    with pytest.raises(ValueError, match=r"inference_defaults.json: color_fix='sepia' is not one of"):
        CCSRPipeline.from_pretrained(root)
    (root / INFERENCE_DEFAULTS).write_text("[1, 2")
    with pytest.raises(ValueError, match=r"inference_defaults.json: not a JSON object"):
        recommended_color_fix(root)
    with pytest.raises(ValueError, match="color_fix='sepia'"):
        write_inference_defaults(root, "sepia")


def test_a_model_folder_recommends_its_border_pad(tiny_single_dir, tmp_path, photo):
    root = _copy(tiny_single_dir, tmp_path)
    assert recommended_border_pad(root) == CCSRPipeline.from_pretrained(root).default_border_pad == 0
    write_inference_defaults(root, "adain", border_pad=16)
    assert json.loads((root / INFERENCE_DEFAULTS).read_text()) == {"color_fix": "adain", "border_pad": 16}
    pipe = CCSRPipeline.from_pretrained(root)
    assert pipe.default_border_pad == 16
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    out = {
        p: pipe(photo, process_size=32, border_pad=p, generator=gen(), output_type="pt").images
        for p in (None, 16, 0)
    }
    assert out[None].shape == out[0].shape  # the padding is cropped off again
    assert torch.equal(out[None], out[16]) and not torch.equal(out[None], out[0])
    pipe.save_pretrained(tmp_path / "saved")
    assert CCSRPipeline.from_pretrained(tmp_path / "saved").default_border_pad == 16
    with pytest.raises(ValueError, match="multiple of 8"):
        pipe(photo, process_size=32, border_pad=4)
    (root / INFERENCE_DEFAULTS).write_text('{"border_pad": 5}')
    with pytest.raises(ValueError, match=r"inference_defaults.json: border_pad=5 must be a multiple of 8"):
        recommended_border_pad(root)


def test_a_model_folder_recommends_its_wavelet_levels(tiny_single_dir, tmp_path, photo):
    root = _copy(tiny_single_dir, tmp_path)
    assert CCSRPipeline.from_pretrained(root).default_wavelet_levels == 5  # the authors' code
    write_inference_defaults(root, "wavelet", wavelet_levels=3)
    assert json.loads((root / INFERENCE_DEFAULTS).read_text()) == {
        "color_fix": "wavelet",
        "wavelet_levels": 3,
    }
    pipe = CCSRPipeline.from_pretrained(root)
    assert pipe.default_wavelet_levels == 3
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    out = {
        k: pipe(photo, process_size=32, wavelet_levels=k, generator=gen(), output_type="pt").images
        for k in (None, 3, 5)
    }
    assert torch.equal(out[None], out[3]) and not torch.equal(out[None], out[5])
    pipe.save_pretrained(tmp_path / "saved")
    assert CCSRPipeline.from_pretrained(tmp_path / "saved").default_wavelet_levels == 3
    with pytest.raises(ValueError, match="wavelet_levels=0"):
        pipe(photo, process_size=32, wavelet_levels=0)
    (root / INFERENCE_DEFAULTS).write_text('{"wavelet_levels": 12}')
    with pytest.raises(ValueError, match=r"inference_defaults.json: wavelet_levels=12 must be an integer"):
        recommended_settings(root)


def test_from_unet_copies_encoder(tiny_components):
    unet = tiny_components[0]
    cn = build_latent_controlnet(unet=unet)
    assert torch.equal(cn.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(cn.down_blocks[0].resnets[0].conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight)
    assert cn.controlnet_cond_embedding.conv.weight.shape == (unet.config.block_out_channels[0], 4, 3, 3)
    assert cn.controlnet_cond_embedding.conv.weight.abs().sum() > 0  # default init, not zero
