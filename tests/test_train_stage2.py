"""Stage 2 (VAE-decoder GAN fine-tuning) end to end on tiny random models of the real classes, CPU.

One 4-step run through the shared accelerate loop (module fixture) backs most checks; a second run
crashes after its step-2 checkpoint and is resumed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ccsr.config import ConfigError, load_config
from ccsr.training.stage2_config import Stage2Config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "stage2.yaml"


class Photos(torch.utils.data.Dataset):
    """Crops of a real photo (skimage's astronaut) in [0, 1]: ``{"gt"}`` (the step degrades it with the
    Real-ESRGAN pipeline) or, ``paired``, ``{"lq", "gt"}`` with a bicubic x1/4 LR as validation sets have.

    ``crash_after``: raise on that many fetches, like a run killed in the middle of a step.
    """

    def __init__(
        self, n: int = 4, size: int = 48, paired: bool = False, crash_after: int | None = None
    ) -> None:
        from skimage import data

        photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
        self.gt = [
            photo[:, 80 + 40 * i : 80 + 40 * i + size, 160 + 30 * i : 160 + 30 * i + size] for i in range(n)
        ]
        self.paired, self.crash_after, self.fetches = paired, crash_after, 0

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.fetches += 1
        if self.crash_after is not None and self.fetches > self.crash_after:
            raise RuntimeError("killed")
        if not self.paired:
            return {"gt": self.gt[i]}
        lq = F.interpolate(self.gt[i][None], scale_factor=0.25, mode="bicubic", antialias=True)[0]
        return {"lq": lq.clamp(0, 1), "gt": self.gt[i]}


def paired_batch(n: int = 2) -> dict[str, torch.Tensor]:
    data = Photos(n, paired=True)
    return {k: torch.stack([data[i][k] for i in range(n)]) for k in ("lq", "gt")}


@pytest.fixture(scope="module")
def assets(tiny_model_dir, tmp_path_factory):
    import torchvision

    from ccsr.models.discriminator import save_tiny_backbones

    root = tmp_path_factory.mktemp("stage2")
    feats, cond = save_tiny_backbones(root / "dino")
    torch.manual_seed(0)
    # A random AlexNet trunk in torchvision's file layout ("features.<i>.*") stands in for the ImageNet file.
    trunk = root / "alexnet-random.pth"
    torch.save(
        {f"features.{k}": v for k, v in torchvision.models.alexnet().features.state_dict().items()}, trunk
    )
    return {"model": tiny_model_dir, "feats": feats, "cond": cond, "trunk": trunk, "root": root}


def overrides(assets, out: Path, *extra: str) -> list[str]:
    """``--set`` values that shrink configs/train/stage2.yaml to the tiny models, CPU, 4 steps."""
    m = assets["model"]
    return [
        f"model.pretrained={m}",
        f"model.controlnet={m}/controlnet",
        f"model.vae={m}/vae",
        f"data.train=[{assets['root']}]",
        "data.resolution=48",
        "data.num_workers=0",
        f"train.output_dir={out}",
        "train.max_train_steps=4",
        "train.batch_size=2",
        "train.gradient_accumulation_steps=1",
        "train.mixed_precision=no",
        "train.log_with=none",
        "train.cpu=true",
        "train.checkpointing_steps=2",
        "train.validation_steps=1000",
        "optimizer.learning_rate=1e-3",  # large enough for visible changes in 4 steps
        f"discriminator.feature_network={assets['feats']}",
        f"discriminator.condition_network={assets['cond']}",
        "discriminator.cmap_dim=4",
        "lpips.net=alex",
        f"lpips.backbone_weights={assets['trunk']}",
        "objective.begin_disc=1",
        *extra,
    ]


def make_cfg(assets, out: Path, *extra: str) -> Stage2Config:
    return load_config(Stage2Config, CONFIG, overrides(assets, out, *extra))


def _snapshot(step) -> dict[str, torch.Tensor]:
    mods = {"vae": step.vae, "unet": step.unet, "controlnet": step.stage1_controlnet}
    mods.update(discriminator=step.discriminator, lpips=step.lpips)
    return {f"{k}.{n}": p.detach().clone() for k, m in mods.items() for n, p in m.named_parameters()}


@pytest.fixture(scope="module")
def full_run(assets):
    from ccsr.training.loop import train
    from ccsr.training.stage2 import Stage2Step

    cfg = make_cfg(assets, assets["root"] / "full")
    step = Stage2Step(cfg)
    before = _snapshot(step)
    result = train(step, Photos(), cfg.train, cfg.optimizer, val_dataset=Photos(2, paired=True), config=cfg)
    return {"cfg": cfg, "step": step, "before": before, "result": result}


def test_shipped_config_holds_the_reference_recipe():
    from ccsr.pipeline import DEFAULT_NEGATIVE_PROMPT

    cfg = load_config(Stage2Config, CONFIG)
    o = cfg.objective
    assert (o.weight_reconstruction, o.weight_lpips, o.weight_gan, o.weight_discriminator, o.begin_disc) == (
        1.0,
        1.0,
        0.05,
        0.5,
        100,
    )
    assert o.trainable == ("decoder",) and o.reconstruction == "l2"
    assert cfg.optimizer.learning_rate == 5e-6 and cfg.sampling.num_inference_steps == 1
    assert cfg.sampling.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    with pytest.raises(ConfigError, match=r"trainable=\['encoder'\].*stay frozen"):
        load_config(Stage2Config, CONFIG, ["objective.trainable=[encoder]"])
    with pytest.raises(ConfigError, match="objective.weight_gna"):
        load_config(Stage2Config, CONFIG, ["objective.weight_gna=1"])


def test_only_decoder_and_discriminator_heads_change(full_run):
    step, before = full_run["step"], full_run["before"]
    after = _snapshot(step)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {k for k in before if k.startswith(("vae.decoder.", "discriminator.heads."))}
    assert changed == expected
    assert any(k.startswith("vae.decoder.") for k in changed) and any(
        k.startswith("discriminator.heads.") for k in changed
    )


def test_gan_term_absent_until_begin_disc_then_present(full_run):
    hist = full_run["result"].history
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    o = full_run["cfg"].objective
    for h in hist:
        global_step = h["step"] - 1
        expected = o.weight_reconstruction * h["loss/reconstruction"] + o.weight_lpips * h["loss/lpips"]
        if global_step <= o.begin_disc:  # begin_disc=1: steps 0 and 1 train without the GAN term
            assert "loss/g_adv" not in h
        else:
            expected += o.weight_gan * h["loss/g_adv"]
        assert h["loss/generator"] == pytest.approx(expected, rel=1e-5)
    assert [("loss/g_adv" in h) for h in hist] == [False, False, True, True]


def test_generator_loss_reaches_only_the_decoder_and_discriminator_loss_only_the_heads(full_run):
    step = full_run["step"]
    out = step(paired_batch(), global_step=50)  # GAN term on
    assert list(out.losses) == ["generator", "discriminator"] and "loss/g_adv" in out.logs
    decoder, heads = step.optimizer_groups()["generator"], step.optimizer_groups()["discriminator"]
    out.losses["generator"].backward()
    assert all(p.grad is None for p in heads)
    assert all(p.grad is not None for p in decoder) and any(p.grad.abs().sum() > 0 for p in decoder)
    for p in decoder:
        p.grad = None
    out.losses["discriminator"].backward()
    assert all(p.grad is None for p in decoder)
    assert all(p.grad is not None for p in heads)
    for p in heads:
        p.grad = None


def test_kill_and_resume_gives_the_uninterrupted_losses(full_run, assets):
    from safetensors.torch import load_file

    from ccsr.training.checkpoint import list_checkpoints
    from ccsr.training.loop import train
    from ccsr.training.stage2 import Stage2Step

    out = assets["root"] / "killed"
    cfg = make_cfg(assets, out)
    # Batches of 2: the fourth batch is fetched while step 3 runs, after checkpoint-2 was written.
    with pytest.raises(RuntimeError, match="killed"):
        train(Stage2Step(cfg), Photos(crash_after=6), cfg.train, cfg.optimizer, config=cfg)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "vae").exists()

    cfg = make_cfg(assets, out, "train.resume_from_checkpoint=latest")
    resumed = train(Stage2Step(cfg), Photos(), cfg.train, cfg.optimizer, config=cfg)
    full = full_run["result"].history
    assert [h["step"] for h in resumed.history] == [3, 4]
    assert resumed.history == full[2:]
    a, b = (
        load_file(resumed.export_dir / "diffusion_pytorch_model.safetensors"),
        load_file(full_run["result"].export_dir / "diffusion_pytorch_model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_exported_vae_loads_into_the_pipeline_and_changes_its_output(full_run, assets, tiny_pipe, photo):
    from ccsr.pipeline import CCSRPipeline

    export = full_run["result"].export_dir
    assert export == assets["root"] / "full" / "vae" and (export / "config.json").is_file()
    tuned = CCSRPipeline.from_pretrained(assets["model"], vae=export.parent)
    trained = full_run["step"].vae.state_dict()
    loaded, original = tuned.vae.state_dict(), tiny_pipe.vae.state_dict()
    for k in loaded:
        assert torch.equal(loaded[k], trained[k])
        assert torch.equal(loaded[k], original[k]) == (not k.startswith("decoder."))

    def run(pipe):
        gen = torch.Generator().manual_seed(0)
        return pipe(photo, steps=1, upscale=2, process_size=0, generator=gen, output_type="pt").images

    base, new = run(tiny_pipe), run(tuned)
    assert base.shape == new.shape == (1, 3, 64, 96)
    assert (base - new).abs().mean() > 1e-3
    # The input VAE is never overwritten (model.vae is assets["model"]/vae).
    before = (assets["model"] / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="would overwrite the VAE this run started from"):
        full_run["step"].export(assets["model"])
    assert (assets["model"] / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_validation_images_are_written_deterministic_and_in_range(full_run, assets):
    written = sorted(p.name for p in (assets["root"] / "full" / "validation" / "step-0000004").iterdir())
    assert written == ["00_gt.png", "00_lq.png", "00_sr.png", "01_gt.png", "01_lq.png", "01_sr.png"]
    step = full_run["step"]
    batch = paired_batch()
    torch.manual_seed(1)
    a = step.validate(batch)
    b = step.validate(batch)
    assert set(a) == {"lq", "sr", "gt"}
    for k in a:
        assert a[k].shape == (2, 3, 48, 48) and 0 <= a[k].min() and a[k].max() <= 1
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    torch.testing.assert_close(a["gt"], batch["gt"])


@pytest.mark.parametrize(
    "sampling",
    [
        ("sampling.num_inference_steps=1",),  # CCSR-S1: one step at t=999
        (  # CCSR-S2: t=999, then t=499 with guidance 4.5 (negative prompt at the extraction step)
            "sampling.num_inference_steps=6",
            "sampling.t_min=0.5",
            "sampling.guidance_scale=4.5",
            "sampling.prompt=clean, high-resolution, 8k",
            "sampling.lr_latent=mode",
        ),
    ],
    ids=["one-step", "two-step-cfg"],
)
def test_training_latent_is_computed_exactly_as_inference(assets, tiny_pipe, photo, tmp_path, sampling):
    from ccsr.image import pil_to_tensor
    from ccsr.training.stage2 import Stage2Step

    cfg = make_cfg(assets, tmp_path, "objective.weight_lpips=0", *sampling)
    s = cfg.sampling
    step = Stage2Step(cfg)
    mine = step.clean_latent(pil_to_tensor(photo), torch.Generator().manual_seed(5))
    ref = tiny_pipe(
        photo,
        num_inference_steps=s.num_inference_steps,
        t_max=s.t_max,
        t_min=s.t_min,
        guidance_scale=s.guidance_scale,
        prompt=s.prompt,
        negative_prompt=s.negative_prompt,
        lr_latent=s.lr_latent,
        upscale=1,
        process_size=0,  # the canvas is the photo itself, as the training LR is already at HR size
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
    )
    assert ref.timesteps == ((999,) if s.num_inference_steps == 1 else (999, 499))
    torch.testing.assert_close(mine, ref.images, rtol=0, atol=0)


def test_l1_ssim_and_post_quant_conv_follow_the_config(assets, tmp_path):
    from ccsr.training.ssim import ssim_loss
    from ccsr.training.stage2 import Stage2Step

    cfg = make_cfg(
        assets,
        tmp_path,
        "objective.weight_lpips=0",
        "objective.reconstruction=l1",
        "objective.weight_ssim=0.5",
        "objective.trainable=[decoder, post_quant_conv]",
    )
    step = Stage2Step(cfg)
    vae = step.vae
    group = {id(p) for p in step.optimizer_groups()["generator"]}
    assert group == {id(p) for p in [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]}
    assert not any(p.requires_grad for p in [*vae.encoder.parameters(), *vae.quant_conv.parameters()])
    assert step.lpips is None

    batch = paired_batch()  # a paired LR is resized (bicubic) to the GT size, the canvas inference sees
    lq = F.interpolate(batch["lq"], size=(48, 48), mode="bicubic").clamp(0, 1)
    torch.manual_seed(3)
    with torch.no_grad():
        z = step.clean_latent(lq)
        img = vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
    expected = (img - (batch["gt"] * 2 - 1)).abs().mean().item()
    expected_ssim = ssim_loss(img, batch["gt"] * 2 - 1).item()
    assert 0 < expected_ssim < 1
    torch.manual_seed(3)
    out = step(batch, global_step=0)
    assert out.logs["loss/reconstruction"] == pytest.approx(expected, rel=1e-6)
    assert out.logs["loss/ssim"] == pytest.approx(expected_ssim, rel=1e-5)
    # No LPIPS, GAN not yet on.
    assert out.losses["generator"].item() == pytest.approx(expected + 0.5 * expected_ssim, rel=1e-5)


def test_lpips_trunk_is_read_from_the_local_file(assets):
    from ccsr.training.perceptual import build_lpips

    model = build_lpips("alex", assets["trunk"])
    saved = torch.load(assets["trunk"], weights_only=True)
    torch.testing.assert_close(model.net.slice1[0].weight, saved["features.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        getattr(model.net.slice5, "10").bias, saved["features.10.bias"], rtol=0, atol=0
    )
    assert not any(p.requires_grad for p in model.parameters())
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert model(x, x).abs().max() == 0 and (model(x, y) > 0).all()


def test_configured_lpips_without_weights_fails_clearly(assets, tmp_path, monkeypatch):
    from ccsr.training.perceptual import build_lpips
    from ccsr.training.stage2 import Stage2Step

    missing = tmp_path / "vgg16.pth"
    with pytest.raises(
        FileNotFoundError, match=r"vgg16-397923af\.pth.*lpips\.backbone_weights.*weight_lpips=0"
    ) as e:
        Stage2Step(make_cfg(assets, tmp_path, "lpips.net=vgg", f"lpips.backbone_weights={missing}"))
    assert str(missing) in str(e.value) and "https://download.pytorch.org/models/vgg16-397923af.pth" in str(
        e.value
    )
    # Without a path the loader looks where torchvision caches it, and says so.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(FileNotFoundError, match="torchvision's cache") as e:
        build_lpips("vgg")
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg16-397923af.pth") in str(e.value)
    bad = tmp_path / "not-alexnet.pth"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision alex checkpoint"):
        build_lpips("alex", bad)


def test_ccsr_train_stage2_runs_on_image_files(assets, tmp_path, capsys):
    from PIL import Image

    from ccsr.cli import main

    hq = tmp_path / "hq"
    hq.mkdir()
    for i, gt in enumerate(Photos(2, size=64).gt):
        Image.fromarray((gt.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(hq / f"{i}.png")
    out = tmp_path / "run"
    args = ["train", "stage2", "--config", str(CONFIG)]
    for o in overrides(assets, out, f"data.train=[{hq}]", "train.max_train_steps=2"):
        args += ["--set", o]
    assert main(args) == 0
    assert f"trained 2 steps; exported {out / 'vae'}" in capsys.readouterr().out
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    assert load_config(Stage2Config, out / "config.yaml") == load_config(Stage2Config, CONFIG, args[5::2])


def test_thin_script_reads_the_config_strictly(tmp_path):
    import subprocess
    import sys

    script = CONFIG.parents[2] / "train" / "stage2.py"
    ok = subprocess.run(
        [sys.executable, str(script), "--print-config"], capture_output=True, text=True, cwd=CONFIG.parents[2]
    )
    assert ok.returncode == 0, ok.stderr
    assert "weight_gan: 0.05" in ok.stdout and "feature_network: facebook/dino-vits16" in ok.stdout
    bad = subprocess.run(
        [sys.executable, str(script), "--set", "discriminator.cmapdim=8", "--print-config"],
        capture_output=True,
        text=True,
        cwd=CONFIG.parents[2],
    )
    assert (
        bad.returncode == 2
        and "discriminator.cmapdim: unknown key (did you mean discriminator.cmap_dim?)" in bad.stderr
    )


RANK_REPORT = """
import json, os, sys
from ccsr.config import load_config
from ccsr.data.datasets import HQImageDataset
from ccsr.training.loop import train
from ccsr.training.stage2 import Stage2Config, Stage2Step

cfg = load_config(Stage2Config, sys.argv[1], sys.argv[3:])
step = Stage2Step(cfg)
train(step, HQImageDataset(cfg.data.train, cfg.data.resolution, seed=0), cfg.train, cfg.optimizer)
report = {
    "wrapped": [type(step.decoder).__name__, type(step.discriminator).__name__],
    "decoder": [p.double().sum().item() for p in step.vae.decoder.parameters()],
    "heads": [p.double().sum().item() for p in step.unwrap("discriminator").heads.parameters()],
}
with open(os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(report, f)
"""


def test_two_processes_train_in_sync_under_ddp(assets, tmp_path):
    """Decoder and heads are DDP-wrapped; the generator's GAN pass goes through the bare discriminator.
    Two CPU processes (gloo) must finish without reducer errors and hold identical weights."""
    import json
    import shutil
    import socket
    import subprocess
    import sys

    from PIL import Image

    hq = tmp_path / "hq"
    hq.mkdir()
    for i, gt in enumerate(Photos(4, size=64).gt):
        Image.fromarray((gt.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(hq / f"{i}.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "rank_report.py"
    script.write_text(RANK_REPORT)
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += [
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(script),
    ]
    cmd += [str(CONFIG), str(tmp_path)]
    cmd += overrides(
        assets,
        tmp_path / "run",
        f"data.train=[{hq}]",
        "train.batch_size=1",
        "train.max_train_steps=2",
        "objective.begin_disc=0",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=500, cwd=CONFIG.parents[2])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["wrapped"] == ["DistributedDataParallel", "DistributedDataParallel"]
    assert r0["decoder"] == r1["decoder"] and r0["heads"] == r1["heads"]
    history = [
        json.loads(line) for line in (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [("loss/g_adv" in h) for h in history] == [False, True]


def test_ssim_loss_agrees_with_the_evaluation_metric_and_has_a_gradient():
    pyiqa = pytest.importorskip("pyiqa")
    from skimage import data

    from ccsr.training.ssim import ssim, ssim_loss

    gt = torch.from_numpy(data.astronaut()[:96, :96].copy()).permute(2, 0, 1)[None].double() / 255
    # uint8-valued RGB, as files hold; pyiqa also rounds the luma to uint8 levels, hence the tolerance below.
    noisy = (
        (gt + 0.05 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1) * 255
    ).round() / 255
    metric = pyiqa.create_metric("ssim", device="cpu", test_y_channel=True, color_space="ycbcr")
    reference = float(metric(noisy.float(), gt.float()))
    mine = 1 - ssim_loss(noisy * 2 - 1, gt * 2 - 1).item()
    assert 0.3 < reference < 0.95
    assert mine == pytest.approx(reference, abs=2e-3)
    assert ssim_loss(gt * 2 - 1, gt * 2 - 1).item() == pytest.approx(0.0, abs=1e-6)

    x = (noisy * 2 - 1).float().requires_grad_(True)
    ssim_loss(x, gt.float() * 2 - 1).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
