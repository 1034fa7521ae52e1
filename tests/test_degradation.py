"""Real-ESRGAN degradation on basicsr, and the training / validation datasets, on real photographs."""

from __future__ import annotations

import logging
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from ccsr.config import load_config
from ccsr.data.datasets import HQImageDataset, PairedImageDataset, list_image_files, read_rgb
from ccsr.data.degradation import RealESRGANDegradation
from ccsr.data.degradation_config import DegradationConfig

REPO = Path(__file__).resolve().parents[1]


def _photos() -> list[np.ndarray]:
    return [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]


def _batch(size: int = 128) -> torch.Tensor:
    """Real photos, (4, 3, size, size) in [0, 1]."""
    crops = [np.ascontiguousarray(p[:size, :size]) for p in _photos()]
    return torch.stack([torch.from_numpy(c).permute(2, 0, 1).float() / 255 for c in crops])


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


# Everything off except what a test switches on: scale 1, no resize, no noise, JPEG at quality 99.
_QUIET = [
    "scale=1",
    "final_sinc_prob=0",
    "kernel_size_range=[21,21]",
    "first.kernel_list=[iso]",
    "first.kernel_prob=[1]",
    "first.sinc_prob=0",
    "first.blur_sigma=[0.2,0.21]",
    "first.resize_prob=[0,0,1]",
    "first.gaussian_noise_prob=1",
    "first.noise_range=[0,0]",
    "first.jpeg_range=[99,99]",
    "second.blur_prob=0",
    "second.resize_prob=[0,0,1]",
    "second.gaussian_noise_prob=1",
    "second.noise_range=[0,0]",
    "second.jpeg_range=[99,99]",
]


def _isolated(*overrides: str) -> RealESRGANDegradation:
    return RealESRGANDegradation(load_config(DegradationConfig, None, _QUIET + list(overrides)))


def test_reference_degradation_is_seeded_in_range_and_degrades():
    cfg = load_config(DegradationConfig, REPO / "configs/data/realesrgan.yaml")
    assert cfg == DegradationConfig()  # the yaml spells out exactly the reference defaults
    degrade = RealESRGANDegradation(cfg)
    gt = _batch()
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    a, b, c = degrade(gt, seed=1), degrade(gt, seed=1), degrade(gt, seed=2)
    # A seeded call is reproducible and leaves the global generators as they were.
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert a.shape == gt.shape and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal((a * 255).round() / 255, a)  # 8-bit quantised, as the reference
    for i in range(len(gt)):  # every image is clearly degraded, not just re-encoded
        assert _psnr(a[i], gt[i]) < 32
    # Unseeded calls draw from the global generators: same global seed, same result.
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    d = degrade(gt)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    assert torch.equal(d, degrade(gt))


def test_blur_is_the_configured_gaussian():
    import cv2

    gt = _batch()
    out = _isolated("first.blur_sigma=[2.999,3.001]")(gt, seed=0)
    for i in range(len(gt)):
        img = gt[i].permute(1, 2, 0).numpy()
        ref = cv2.GaussianBlur(img, (21, 21), 3, borderType=cv2.BORDER_REFLECT_101)
        ref = torch.from_numpy(ref).permute(2, 0, 1)
        assert _psnr(out[i], ref) > 38  # the same blur up to JPEG q99 and 8-bit rounding
        lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).expand(3, 1, 3, 3)
        energy = [torch.nn.functional.conv2d(x[i : i + 1], lap, groups=3).var() for x in (gt, out)]
        assert energy[1] < 0.1 * energy[0]


def test_gaussian_noise_has_the_configured_sigma():
    gt = _batch()
    mid = (gt > 0.15) & (gt < 0.85)  # away from the clipping at 0 and 1
    # Grey noise (the same draw in R, G, B) is pure luma, which the final JPEG's chroma subsampling keeps.
    residual = _isolated("first.noise_range=[20,20]", "first.gray_noise_prob=1")(gt, seed=0) - gt
    assert abs(float(residual[mid].std()) - 20 / 255) < 0.1 * 20 / 255
    assert float((residual[:, 0] - residual[:, 2]).abs().mean()) < 0.35 * float(residual.abs().mean())
    colour = _isolated("first.noise_range=[20,20]", "first.gray_noise_prob=0")(gt, seed=0) - gt
    assert float((colour[:, 0] - colour[:, 2]).abs().mean()) > 0.5 * float(colour.abs().mean())


def test_jpeg_matches_real_jpeg_error_level():
    gt = _batch()
    out = _isolated("first.jpeg_range=[10,10]")(gt, seed=0)
    for i in range(len(gt)):
        arr = (gt[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        from io import BytesIO

        buf = BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=10)
        pil = torch.from_numpy(np.asarray(Image.open(buf), dtype=np.float32) / 255).permute(2, 0, 1)
        assert _psnr(out[i], gt[i]) < 33
        assert abs(_psnr(out[i], gt[i]) - _psnr(pil, gt[i])) < 3


def test_batch_options_and_small_input_error():
    gt = _batch(96)
    shared = RealESRGANDegradation(load_config(DegradationConfig, None, ["shared_resize=true"]))
    assert shared(gt, seed=0).shape == gt.shape
    lr = RealESRGANDegradation(load_config(DegradationConfig, None, ["resize_back=false"]))(gt, seed=0)
    assert lr.shape == (4, 3, 24, 24)
    with pytest.raises(ValueError, match=r"needs both sides >= 44"):
        RealESRGANDegradation()(gt[:, :, :40, :40])


def test_basicsr_is_imported_by_one_module_only():
    assert "torchvision.transforms.functional_tensor" in sys.modules  # the alias basicsr 1.4.2 needs
    importers = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "ccsr").rglob("*.py")
        if re.search(r"^\s*(from|import) basicsr", p.read_text(), re.M)
    ]
    assert importers == ["ccsr/data/degradation.py"]


def test_basicsr_imports_without_distutils():
    """Python 3.12 has no distutils (setuptools may provide it, or not); basicsr 1.4.2 imports it."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('distutils', '_distutils_hack'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.modules.pop('distutils', None)\n"
        "from ccsr.data.degradation import RealESRGANDegradation\n"
        "import basicsr.archs.arch_util as au\n"
        "print(au.LooseVersion('0.29.1') >= au.LooseVersion('0.9.0'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"


@pytest.fixture(scope="module")
def hq_folder(tmp_path_factory) -> Path:
    """Real photos in a mix of formats, plus two files that must be skipped."""
    import cv2

    root = tmp_path_factory.mktemp("hq")
    a, b, c, d = _photos()
    Image.fromarray(a).save(root / "astronaut.png")
    Image.fromarray(b).save(root / "chelsea.jpg", quality=95)
    Image.fromarray(c).save(root / "coffee.webp", lossless=True)
    (root / "sub").mkdir()
    Image.fromarray(d).save(root / "sub" / "rocket.bmp")
    Image.fromarray(skdata.camera()).save(root / "camera.tif")  # grey
    cv2.imwrite(str(root / "astro16.png"), (a[:, :, ::-1].astype(np.uint16) * 257))  # 16-bit colour
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(a[:50, :50]).save(root / "tiny.png")
    return root


def test_hq_dataset_skips_bad_files_once_with_a_count(hq_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="ccsr.data.datasets"):
        ds = HQImageDataset([hq_folder], resolution=96, seed=0)
    assert len(ds) == 6 and len(ds.skipped) == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("skipped 2 of 8 training files")
    assert "broken.png" in warnings[0] and "tiny.png (50x50 < 96)" in warnings[0]
    # 16-bit is read at full depth, grey becomes 3 channels.
    a16, a8 = read_rgb(hq_folder / "astro16.png"), read_rgb(hq_folder / "astronaut.png")
    assert np.allclose(a16, a8, atol=1e-6)
    cam = read_rgb(hq_folder / "camera.tif")
    assert cam.shape == (512, 512, 3) and np.array_equal(cam[..., 0], cam[..., 2])
    item = ds[0]["gt"]
    assert item.shape == (3, 96, 96) and item.dtype == torch.float32 and 0 <= item.min() <= item.max() <= 1
    # Crops depend on (seed, epoch, index) only.
    assert torch.equal(ds[3]["gt"], ds[3]["gt"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["gt"], HQImageDataset([hq_folder], 96, seed=0)[3]["gt"])


def test_hq_dataset_cache_gives_the_same_crops_without_rereading(hq_folder, tmp_path):
    import shutil

    folder = tmp_path / "hq"
    shutil.copytree(hq_folder, folder)
    plain = HQImageDataset([folder], 96, seed=0)
    cached = HQImageDataset([folder], 96, seed=0, cache_mb=64)
    first = [cached[i]["gt"] for i in range(len(cached))]
    assert all(torch.equal(a, plain[i]["gt"]) for i, a in enumerate(first))
    for path in cached.files:  # every body is in memory now: the files are no longer needed
        path.unlink()
    cached.set_epoch(1)
    plain_again = HQImageDataset([hq_folder], 96, seed=0)
    plain_again.set_epoch(1)
    assert all(torch.equal(cached[i]["gt"], plain_again[i]["gt"]) for i in range(len(cached)))
    small = HQImageDataset([hq_folder], 96, seed=0, cache_mb=1)  # a budget below one 512x512 image
    small[0]
    assert small._cached == 0


def test_persistent_workers_draw_each_epoch_s_crops(hq_folder):
    """The loop's sampler puts the epoch in the index, so workers that live across epochs (they never
    see set_epoch) give exactly the crops set_epoch gives."""
    from torch.utils.data import DataLoader

    from ccsr.training.loop import EpochSampler

    ds = HQImageDataset([hq_folder], 96, seed=0, cache_mb=64)
    sampler = EpochSampler(len(ds), seed=1, epoch_in_index=True)
    loader = DataLoader(ds, batch_size=len(ds), sampler=sampler, num_workers=1, persistent_workers=True)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        (batch,) = list(loader)
        order = np.random.default_rng((1, epoch)).permutation(len(ds))
        ref = HQImageDataset([hq_folder], 96, seed=0)
        ref.set_epoch(epoch)
        assert torch.equal(batch["gt"], torch.stack([ref[int(i)]["gt"] for i in order])), epoch


def test_list_file_and_missing_source(hq_folder, tmp_path):
    listing = tmp_path / "gt_paths.txt"
    listing.write_text(f"# HQ images\n{hq_folder / 'astronaut.png'}\n\n{hq_folder / 'sub' / 'rocket.bmp'}\n")
    assert [p.name for p in list_image_files([listing])] == ["astronaut.png", "rocket.bmp"]
    assert len(HQImageDataset([listing, hq_folder / "sub"], 64)) == 3
    with pytest.raises(FileNotFoundError, match="neither a folder nor a list file"):
        list_image_files([tmp_path / "nope"])
    with pytest.raises(ValueError, match="no usable training image"):
        HQImageDataset([hq_folder], resolution=4096)


def test_dataloader_workers_then_degradation_on_the_training_device(hq_folder):
    from torch.utils.data import DataLoader

    ds = HQImageDataset([hq_folder], resolution=64, seed=3)
    with_workers = list(DataLoader(ds, batch_size=3, num_workers=2))
    in_process = list(DataLoader(ds, batch_size=3, num_workers=0))
    assert len(with_workers) == 2
    for a, b in zip(with_workers, in_process):
        assert torch.equal(a["gt"], b["gt"])  # the worker count does not change the crops
    lq = RealESRGANDegradation()(with_workers[0]["gt"], seed=0)
    assert lq.shape == (3, 3, 64, 64) and math.isfinite(float(lq.sum()))


def test_paired_validation_folders(tmp_path):
    lr_dir, hr_dir = tmp_path / "lr", tmp_path / "hr"
    lr_dir.mkdir(), hr_dir.mkdir()
    for name, photo in (("a", skdata.astronaut()), ("b", skdata.coffee()[:, :400])):
        hr = Image.fromarray(photo).resize((160, 160))
        hr.save(hr_dir / f"{name}.png")
        hr.resize((40, 40), Image.Resampling.BICUBIC).save(lr_dir / f"{name}.jpg")
    ds = PairedImageDataset(lr_dir, hr_dir, crop=128)
    item = ds[1]
    assert item["lq"].shape == (3, 32, 32) and item["gt"].shape == (3, 128, 128)
    Image.fromarray(skdata.chelsea()).save(lr_dir / "extra.png")
    with pytest.raises(ValueError, match=r"only in LR: \['extra'\]"):
        PairedImageDataset(lr_dir, hr_dir)
    (lr_dir / "extra.png").unlink()
    Image.fromarray(skdata.astronaut()[:50, :45]).save(lr_dir / "a.jpg")
    with pytest.raises(ValueError, match="HR must be an integer multiple of LR"):
        PairedImageDataset(lr_dir, hr_dir)[0]


@pytest.mark.parametrize("shared", [False, True])
def test_clean_prob_mixes_plain_bicubic_images_into_the_batch(shared):
    """clean_prob=1: every LR is the PIL-like bicubic x4 of its GT, resized back; 0.5 mixes both kinds;
    0 draws exactly what the reference draws (the default stream is unchanged)."""
    gt = _batch(96)
    opts = [f"shared_resize={str(shared).lower()}"]
    clean = RealESRGANDegradation(load_config(DegradationConfig, None, [*opts, "clean_prob=1.0"]))(gt, seed=3)
    for i in range(len(gt)):
        small = Image.fromarray((gt[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        small = small.resize((24, 24), Image.Resampling.BICUBIC).resize((96, 96), Image.Resampling.BICUBIC)
        ref = torch.from_numpy(np.array(small)).permute(2, 0, 1).float() / 255
        assert (clean[i] - ref).abs().mean() < 2.5 / 255  # torch's antialiased bicubic vs PIL's
    half = RealESRGANDegradation(load_config(DegradationConfig, None, [*opts, "clean_prob=0.5"]))
    kinds = {
        bool(torch.allclose(half(gt, seed=s)[i], clean[i], atol=1e-6)) for s in range(4) for i in range(4)
    }
    assert kinds == {True, False}
    zero = RealESRGANDegradation(load_config(DegradationConfig, None, [*opts, "clean_prob=0.0"]))
    assert torch.equal(
        zero(gt, seed=3), RealESRGANDegradation(load_config(DegradationConfig, None, opts))(gt, seed=3)
    )
    with pytest.raises(ValueError, match=r"clean_prob=1.5 must be a probability"):
        DegradationConfig(clean_prob=1.5)


def test_recolor_keeps_structure_and_covers_colours():
    """A recoloured crop keeps its edges (luma correlation) but its colours move, and over many draws a
    grey-free photograph reaches hues it does not hold (the autoencoder must see every colour)."""
    from ccsr.data.augment import recolor

    crop = np.ascontiguousarray(skdata.coffee()[:64, :64]).astype(np.float32) / 255
    luma = crop @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    draws = [recolor(crop, np.random.default_rng(i)) for i in range(32)]
    for out in draws:
        assert out.shape == crop.shape and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1
        out_luma = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        assert np.corrcoef(luma.ravel(), out_luma.ravel())[0, 1] > 0.5
    means = np.stack([d.reshape(-1, 3).mean(0) for d in draws])
    # coffee is orange-brown (red > green > blue on average); recolouring puts each channel on top sometimes
    assert set(np.argmax(means, axis=1)) == {0, 1, 2}
    assert np.array_equal(recolor(crop, np.random.default_rng(3)), draws[3])  # a function of the generator


def test_smooth_patch_is_flat_or_a_ramp():
    from ccsr.data.augment import smooth_patch

    flat = smooth_patch(32, np.random.default_rng(0), flat_prob=1.0)
    assert flat.shape == (32, 32, 3) and np.ptp(flat, axis=(0, 1)).max() <= 0.07
    ramp = smooth_patch(32, np.random.default_rng(0), flat_prob=0.0)
    assert np.ptp(ramp, axis=(0, 1)).max() > 0.1
    assert np.abs(np.diff(ramp, axis=0)).max() < 0.05 and np.abs(np.diff(ramp, axis=1)).max() < 0.05


def test_hq_dataset_augments_the_share_it_is_asked_to(hq_folder):
    plain = HQImageDataset([hq_folder], 96, seed=0)
    smooth = HQImageDataset([hq_folder], 96, seed=0, smooth_prob=1.0)
    recoloured = HQImageDataset([hq_folder], 96, seed=0, recolor_prob=1.0)
    for i in range(len(plain)):
        s = smooth[i]["gt"]
        assert s.shape == (3, 96, 96) and s.dtype == torch.float32
        # a synthetic ramp: no pixel differs from its neighbour by more than a few levels
        assert float((s[:, 1:] - s[:, :-1]).abs().max()) < 0.05
        assert not torch.equal(recoloured[i]["gt"], plain[i]["gt"])
        assert torch.equal(recoloured[i]["gt"], recoloured[i]["gt"])  # still (seed, epoch, index) only
    off = HQImageDataset([hq_folder], 96, seed=0, recolor_prob=0.0, smooth_prob=0.0)
    assert all(torch.equal(off[i]["gt"], plain[i]["gt"]) for i in range(len(plain)))
    # what `ccsr train autoencoder --set data.smooth_prob=1` builds
    from ccsr.training.scratch_config import ImageDataConfig

    configured = HQImageDataset.from_config(
        ImageDataConfig(train=(str(hq_folder),), resolution=96, smooth_prob=1.0), seed=0
    )
    assert torch.equal(configured[2]["gt"], smooth[2]["gt"])
