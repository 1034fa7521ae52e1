"""Stage-1 training on the tiny model (CPU): the objective, the accelerate loop, resume, export, 2 processes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from ccsr.config import load_config
from ccsr.training.stage1_config import Stage1Config, Stage1Objective

REPO = Path(__file__).resolve().parents[1]
STAGE1_YAML = str(REPO / "configs/train/stage1.yaml")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four real photographs (96 px crops) in three formats."""
    root = tmp_path_factory.mktemp("photos")
    crops = [
        skdata.astronaut()[:192:2, 100:292:2],
        skdata.chelsea()[:96, 100:196],
        skdata.coffee()[100:196, 200:296],
    ]
    crops.append(skdata.rocket()[200:296, 300:396])
    for i, (crop, ext) in enumerate(zip(crops, ("png", "jpg", "webp", "png"))):
        Image.fromarray(np.ascontiguousarray(crop)).save(
            root / f"{i}.{ext}", **({"quality": 95} if ext == "jpg" else {})
        )
    return root


@pytest.fixture(scope="module")
def val_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("val")
    (root / "lr").mkdir(), (root / "hr").mkdir()
    hr = Image.fromarray(skdata.astronaut()).resize((48, 48), Image.Resampling.BICUBIC)
    hr.save(root / "hr" / "astronaut.png")
    hr.resize((12, 12), Image.Resampling.BICUBIC).save(root / "lr" / "astronaut.png")
    return root / "lr", root / "hr"


def _overrides(model_dir: Path, photos: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.pretrained={model_dir}",
        "model.controlnet_init=null",
        f"data.train=[{photos}]",
        "data.resolution=48",
        "data.num_workers=0",
        f"train.output_dir={out}",
        "train.batch_size=2",
        "train.gradient_accumulation_steps=1",
        "train.mixed_precision=no",
        "train.cpu=true",
        "train.log_with=none",
        "optimizer.learning_rate=1e-3",
        *extra,
    ]


def _cfg(*overrides: str) -> Stage1Config:
    return load_config(Stage1Config, STAGE1_YAML, list(overrides))


def _digest(module: torch.nn.Module) -> str:
    sd = module.state_dict()
    return hashlib.sha256(b"".join(sd[k].detach().float().numpy().tobytes() for k in sorted(sd))).hexdigest()


def _safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


# ------------------------------------------------------------------------------------------ objective
def _sd21_alphas_cumprod() -> torch.Tensor:
    """SD-2.1's scaled_linear schedule written out: betas = linspace(sqrt(b0), sqrt(b1), 1000) ** 2."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def test_stage1_losses_match_hand_computation():
    from diffusers import DDPMScheduler

    from ccsr.models.tiny import SD21_SCHEDULER
    from ccsr.training.stage1 import stage1_losses

    abar = DDPMScheduler.from_config(SD21_SCHEDULER).alphas_cumprod
    assert torch.allclose(abar, _sd21_alphas_cumprod(), atol=1e-6)
    # docs/algorithm.md §1.5
    assert abs(abar[999].sqrt() - 0.0683) < 1e-4 and abs((1 - abar[999]).sqrt() - 0.9977) < 1e-4
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    noise, t = torch.randn(3, 2, 4, 3, 3, generator=g), torch.tensor([10, 600])
    w = torch.tensor(0.3, requires_grad=True)
    calls = []

    def model_fn(x, tt):  # a stand-in denoiser with one trainable weight
        calls.append(tt if isinstance(tt, int) else tuple(tt.tolist()))
        return w * x + 0.1

    obj = Stage1Objective(weight_eps=0.5, weight_x0=2.0, weight_x0_renoised=3.0)
    terms = stage1_losses(model_fn, z, c, abar, obj, noise=noise, timesteps=t)
    assert calls == [(10, 600), 999, 667]  # t < round(1000 * 0.6667), then T = 999, then tau = 667

    def by_hand(w, detach_first_x0=False):
        a = abar.double()
        s, r = a.sqrt(), (1 - a).sqrt()
        zz, nn_ = z.double(), noise.double()
        x_t = s[t].view(2, 1, 1, 1) * zz + r[t].view(2, 1, 1, 1) * nn_[0]
        l_eps = ((w * x_t + 0.1 - nn_[0]) ** 2).mean()
        x_big = s[999] * zz + r[999] * nn_[1]
        x0 = (x_big - r[999] * (w * x_big + 0.1)) / s[999]
        l_x0 = ((x0 - zz) ** 2).mean()
        x0_in = x0.detach() if detach_first_x0 else x0
        x_tau = s[667] * x0_in + r[667] * nn_[2]
        x0_tau = (x_tau - r[667] * (w * x_tau + 0.1)) / s[667]
        l_re = ((x0_tau - zz) ** 2).mean()
        return l_eps, l_x0, l_re, 0.5 * l_eps + 2 * l_x0 + 3 * l_re

    wd = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    expected = by_hand(wd)
    for name, value in zip(("eps", "x0", "x0_renoised", "loss"), expected):
        assert torch.allclose(terms[name].double(), value, rtol=1e-4), name
    # The re-noised term trains through both passes: its gradient is the undetached one.
    (grad,) = torch.autograd.grad(terms["x0_renoised"], w)
    (full,) = torch.autograd.grad(expected[2], wd)
    (cut,) = torch.autograd.grad(by_hand(wd, detach_first_x0=True)[2], wd)
    assert torch.allclose(grad.double(), full, rtol=1e-4) and not torch.allclose(full, cut, rtol=1e-2)

    # Option: x_T from the LR latent; a zero weight skips its passes.
    calls.clear()
    lr_start = stage1_losses(
        model_fn,
        z,
        c,
        abar,
        Stage1Objective(start_from="lr", weight_eps=0, weight_x0_renoised=0),
        noise=noise,
    )
    assert calls == [999] and set(lr_start) == {"x0", "loss"}
    s, r = abar[999].sqrt(), (1 - abar[999]).sqrt()
    x_big = s * c + r * noise[1]
    expected_x0 = (((x_big - r * (0.3 * x_big + 0.1)) / s - z) ** 2).mean()
    assert torch.allclose(lr_start["x0"], expected_x0, rtol=1e-4)

    # v prediction (ccsr-tiny): the first term's target is v, the x0 terms read the output as v.
    v_terms = stage1_losses(
        model_fn, z, c, abar, obj, noise=noise, timesteps=t, prediction_type="v_prediction"
    )
    st, rt = abar[t].sqrt().view(2, 1, 1, 1), (1 - abar[t]).sqrt().view(2, 1, 1, 1)
    x_t = st * z + rt * noise[0]
    assert torch.allclose(
        v_terms["eps"], ((0.3 * x_t + 0.1 - (st * noise[0] - rt * z)) ** 2).mean(), rtol=1e-4
    )
    x_big = s * z + r * noise[1]
    assert torch.allclose(v_terms["x0"], ((s * x_big - r * (0.3 * x_big + 0.1) - z) ** 2).mean(), rtol=1e-4)


def test_pixel_term_is_l1_of_the_decoded_one_step_x0():
    """objective.weight_x0_pixel: L1(decode(x0_T), image), with x0_T the same one-step x0 as the x0 term;
    gradients reach the denoiser through the decoder (real AutoencoderKL, frozen)."""
    from diffusers import DDPMScheduler

    from ccsr.encoding import decode_latent
    from ccsr.models.tiny import SD21_SCHEDULER, TinySpec, build_tiny_components
    from ccsr.training.stage1 import stage1_losses

    abar = DDPMScheduler.from_config(SD21_SCHEDULER).alphas_cumprod
    vae = build_tiny_components(TinySpec(), seed=0)[2].eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    z, c = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    noise, image = torch.randn(3, 2, 4, 4, 4, generator=g), torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    w = torch.tensor(0.3, requires_grad=True)

    def model_fn(x, tt):
        return w * x + 0.1

    def decode(latents):
        return decode_latent(vae, latents, differentiable=True)

    obj = Stage1Objective(
        start_from="lr", weight_eps=0, weight_x0=2.0, weight_x0_renoised=0, weight_x0_pixel=5.0
    )
    terms = stage1_losses(model_fn, z, c, abar, obj, noise=noise, decode=decode, image=image)
    s, r = abar[999].sqrt(), (1 - abar[999]).sqrt()
    x_big = s * c + r * noise[1]
    x0 = (x_big - r * (0.3 * x_big + 0.1)) / s
    expected = (decode(x0) - image).abs().mean()
    assert torch.allclose(terms["x0_pixel"], expected, rtol=1e-4)
    assert torch.allclose(terms["loss"], 2.0 * terms["x0"] + 5.0 * expected, rtol=1e-4)
    (grad,) = torch.autograd.grad(terms["x0_pixel"], w)
    assert grad.abs() > 0
    assert not decode_latent(
        vae, x0.requires_grad_()
    ).requires_grad  # the pipeline's decode stays gradient-free
    # Only the pixel term: the one-step pass still runs; without a decoder it is refused.
    pixel_only = Stage1Objective(weight_eps=0, weight_x0=0, weight_x0_renoised=0, weight_x0_pixel=1.0)
    assert set(stage1_losses(model_fn, z, c, abar, pixel_only, noise=noise, decode=decode, image=image)) == {
        "x0_pixel",
        "loss",
    }
    with pytest.raises(ValueError, match="weight_x0_pixel"):
        stage1_losses(model_fn, z, c, abar, pixel_only, noise=noise)


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def trained(tiny_model_dir, photos, val_dirs, tmp_path_factory):
    """Three real steps from the released (tiny) ControlNet, with validation and tensorboard."""
    from accelerate.utils import set_seed

    from ccsr.data.datasets import HQImageDataset, PairedImageDataset
    from ccsr.training.loop import train
    from ccsr.training.stage1 import build_step

    out = tmp_path_factory.mktemp("run") / "out"
    cfg = _cfg(
        *_overrides(tiny_model_dir, photos, out),
        f"model.controlnet_init={tiny_model_dir / 'controlnet'}",
        "train.max_train_steps=3",
        "train.validation_steps=2",
        "train.log_with=tensorboard",
        "train.gradient_checkpointing=true",
    )
    set_seed(0)
    step = build_step(cfg)
    result = train(
        step,
        HQImageDataset(cfg.data.train, cfg.data.resolution),
        cfg.train,
        cfg.optimizer,
        val_dataset=PairedImageDataset(*val_dirs, crop=48),
        config=cfg,
    )
    return step, result, out


def test_a_few_steps_train_only_the_controlnet(trained, tiny_model_dir):
    from ccsr.models.loading import load_components

    step, result, out = trained
    assert result.global_step == 3 and len(result.history) == 3
    for record in result.history:
        assert all(math.isfinite(v) for k, v in record.items() if k.startswith(("loss/", "term/")))
        assert {"term/eps", "term/x0", "term/x0_renoised"} <= set(record)
    # The optimizer holds exactly the ControlNet's parameters.
    controlnet = step.unwrap("controlnet")
    assert {id(p) for p in step.optimizer_groups()["controlnet"]} == {id(p) for p in controlnet.parameters()}
    # Frozen parts are bit-identical to the files they came from; the ControlNet moved everywhere.
    fresh = load_components(tiny_model_dir, load_controlnet=False)
    for name in ("unet", "vae", "text_encoder"):
        assert _digest(getattr(step, name)) == _digest(getattr(fresh, name)), name
        assert not any(p.requires_grad for p in getattr(step, name).parameters())
    before, after = _safetensors(tiny_model_dir / "controlnet"), _safetensors(out / "controlnet")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.9 * len(before)
    # Outputs of a run: resolved config, metrics, validation images, tensorboard events, checkpoint.
    assert load_config(Stage1Config, out / "config.yaml").train.max_train_steps == 3
    lines = (out / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert sorted(p.name for p in (out / "validation" / "step-0000002").iterdir()) == [
        "00_gt.png",
        "00_lq.png",
        "00_sr.png",
    ]
    assert (out / "validation" / "step-0000003" / "00_sr.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents*"))
    assert (out / "checkpoints" / "checkpoint-3" / "model.safetensors").is_file()


def test_exported_controlnet_loads_in_the_pipeline_and_changes_its_output(
    trained, tiny_model_dir, tiny_pipe, photo
):
    from ccsr.pipeline import CCSRPipeline

    _, result, _ = trained
    pipe = CCSRPipeline.from_pretrained(tiny_model_dir, controlnet=result.export_dir)
    kwargs = dict(steps=1, upscale=2, process_size=64, output_type="pt")
    new = pipe(photo, generator=torch.Generator().manual_seed(0), **kwargs).images
    old = tiny_pipe(photo, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert new.shape == old.shape == (1, 3, 64, 96)
    assert torch.isfinite(new).all() and (new - old).abs().max() > 1e-3


def test_loss_falls_when_overfitting_a_fixed_batch(tiny_model_dir, photos, tmp_path):
    from accelerate.utils import set_seed

    from ccsr.data.datasets import HQImageDataset
    from ccsr.data.degradation import RealESRGANDegradation
    from ccsr.training.loop import train
    from ccsr.training.stage1 import build_step

    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(skdata.astronaut()[100:196:2, 180:276:2]).save(one / "a.png")  # exactly one 48 px crop
    cfg = _cfg(
        *_overrides(tiny_model_dir, one, tmp_path / "out"),
        "train.batch_size=1",
        "train.max_train_steps=30",
        "train.checkpointing_steps=1000",
        "optimizer.learning_rate=1e-2",
    )
    set_seed(0)
    step = build_step(cfg)
    degrade = RealESRGANDegradation()
    step.degrade = lambda gt: degrade(gt, seed=0)  # the same LR image every step
    result = train(step, HQImageDataset(cfg.data.train, 48, flip=False), cfg.train, cfg.optimizer)
    losses = np.array([h["loss/controlnet"] for h in result.history])
    assert np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.8 * losses[:5].mean()


def test_resume_replays_the_uninterrupted_run(tiny_model_dir, photos, tmp_path):
    """`ccsr train stage1` for 3 steps, then `--resume latest` to 6 == one 6-step run: losses and weights.
    Covers EMA, a warm-up schedule that is mid-way at the checkpoint, and a resume inside an epoch."""
    from ccsr.cli import main
    from ccsr.training.stage1 import run

    common = ["train.use_ema=true", "train.ema_decay=0.9", "optimizer.lr_scheduler=constant_with_warmup"]
    common += ["optimizer.lr_warmup_steps=4", "train.checkpointing_steps=3", "data.num_workers=2"]
    full = run(
        _cfg(*_overrides(tiny_model_dir, photos, tmp_path / "full"), *common, "train.max_train_steps=6")
    )

    argv = ["train", "stage1", "--config", STAGE1_YAML]
    for o in _overrides(tiny_model_dir, photos, tmp_path / "split") + common:
        argv += ["--set", o]
    assert main([*argv, "--set", "train.max_train_steps=3"]) == 0
    with pytest.raises(FileExistsError, match="--resume latest"):  # a fresh run must not overwrite it
        main([*argv, "--set", "train.max_train_steps=6"])
    assert main([*argv, "--set", "train.max_train_steps=6", "--resume", "latest"]) == 0

    def losses(folder: Path) -> list[tuple[int, float]]:
        lines = (folder / "logs" / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss/controlnet"]) for r in map(json.loads, lines)]

    assert [s for s, _ in losses(tmp_path / "split")] == [1, 2, 3, 4, 5, 6]
    assert (
        losses(tmp_path / "split")
        == losses(tmp_path / "full")
        == [(h["step"], h["loss/controlnet"]) for h in full.history]
    )
    a, b = _safetensors(tmp_path / "full" / "controlnet"), _safetensors(tmp_path / "split" / "controlnet")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_through_accelerate_keep_identical_controlnets(tiny_model_dir, photos, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with train.cpu=true: torchrun + gloo DDP on CPU."""
    out = tmp_path / "ddp"
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import hashlib, json, sys\n"
        "from accelerate.utils import set_seed\n"
        "from ccsr.config import load_config\n"
        "from ccsr.data.datasets import HQImageDataset\n"
        "from ccsr.training.loop import train\n"
        "from ccsr.training.stage1 import build_step\n"
        "from ccsr.training.stage1_config import Stage1Config\n"
        "cfg = load_config(Stage1Config, sys.argv[1], sys.argv[2:])\n"
        "set_seed(0)\n"
        "step = build_step(cfg)\n"
        "res = train(step, HQImageDataset(cfg.data.train, cfg.data.resolution), cfg.train, cfg.optimizer)\n"
        "sd = step.unwrap('controlnet').state_dict()\n"
        "digest = hashlib.sha256(b''.join(sd[k].detach().numpy().tobytes() for k in sorted(sd))).hexdigest()\n"
        "acc = step.accelerator\n"
        "record = dict(n=acc.num_processes, digest=digest, losses=[h['loss/controlnet'] for h in res.history])\n"
        "open(f'{cfg.train.output_dir}/rank{acc.process_index}.json', 'w').write(json.dumps(record))\n"
    )
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd += [
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]
    cmd += [
        str(driver),
        STAGE1_YAML,
        *_overrides(tiny_model_dir, photos, out, "train.batch_size=1", "train.max_train_steps=2"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["n"] == ranks[1]["n"] == 2
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each process saw its own images and noise
    assert ranks[0]["digest"] == ranks[1]["digest"]  # ... yet the gradients were averaged: same weights
    exported = _safetensors(out / "controlnet")
    from ccsr.models.controlnet import from_disk_state_dict

    exported = from_disk_state_dict(exported)
    digest = hashlib.sha256(b"".join(exported[k].numpy().tobytes() for k in sorted(exported))).hexdigest()
    assert digest == ranks[0]["digest"]


def test_accumulation_and_bf16_autocast(tiny_model_dir, photos, tmp_path):
    from ccsr.training.stage1 import run

    cfg = _cfg(
        *_overrides(tiny_model_dir, photos, tmp_path / "out"),
        "train.gradient_accumulation_steps=2",
        "train.mixed_precision=bf16",
        "train.max_train_steps=2",
    )
    result = run(cfg)
    assert [h["step"] for h in result.history] == [1, 1, 2, 2]  # two micro-batches per update
    assert all(math.isfinite(h["loss/controlnet"]) for h in result.history)
    metrics = [
        json.loads(line) for line in (tmp_path / "out" / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in metrics] == [1, 2]
    for m, pair in zip(
        metrics, (result.history[:2], result.history[2:])
    ):  # logged: mean of the micro-batches
        assert m["loss/controlnet"] == pytest.approx(sum(h["loss/controlnet"] for h in pair) / 2)
    exported = _safetensors(result.export_dir)
    assert all(t.dtype == torch.float32 for t in exported.values())  # fp32 master weights are exported


def test_8bit_adam(tiny_model_dir, photos, tmp_path):
    pytest.importorskip("bitsandbytes")
    from ccsr.training.stage1 import run

    cfg = _cfg(
        *_overrides(tiny_model_dir, photos, tmp_path / "out"),
        "optimizer.use_8bit_adam=true",
        "train.max_train_steps=2",
    )
    run(cfg)
    state = torch.load(
        tmp_path / "out" / "checkpoints" / "checkpoint-2" / "optimizer.bin", weights_only=False
    )
    # bitsandbytes' optimizer state (tiny tensors keep 32-bit moments: bnb quantises from 4096 elements).
    assert state["state"] and all("__bnb_optimizer_quant_state__" in s for s in state["state"].values())


def test_a_float16_release_is_continued_in_float32(tiny_model_dir, photos, tmp_path):
    """ccsr-tiny ships float16 weights; a stage 1 continued from them must train float32 parameters."""
    import torch

    from ccsr.models.controlnet import load_ccsr_controlnet, save_ccsr_controlnet
    from ccsr.training.stage1 import build_step

    half = tmp_path / "release" / "controlnet"
    save_ccsr_controlnet(load_ccsr_controlnet(tiny_model_dir / "controlnet").to(torch.float16), half)
    assert next(load_ccsr_controlnet(half).parameters()).dtype == torch.float16
    cfg = _cfg(*_overrides(tiny_model_dir, photos, tmp_path / "out"), f"model.controlnet_init={half.parent}")
    step = build_step(cfg)
    assert {p.dtype for p in step.controlnet.parameters()} == {torch.float32}
