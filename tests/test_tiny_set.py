"""`ccsr data tiny-set`: the offline training set, built from a fake Debian package folder (no network)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccsr.data import tiny_set
from ccsr.data.debian import licence_of

PLASMA = "plasma-workspace-wallpapers"
DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: {name}

Files: *
Copyright: 2014 Someone
License: GPL-2+

Files: special-*.png
Copyright: 2020 Other Person
License: CC-BY-SA-4.0

Files: debian/*
Copyright: 2014 Packager
License: GPL-2+
"""


def _photo(seed: int, size=(816, 512)) -> Image.Image:
    """Smooth random field plus sensor-like noise: no flat 8x8 block, as a photograph."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (size[1] // 32, size[0] // 32, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    return Image.fromarray((base + rng.normal(0, 4, base.shape)).clip(0, 255).astype(np.uint8))


def _fake_packages(root: Path) -> Path:
    """The five packages as `dpkg-deb -x` leaves them, with a few images each."""
    for name in tiny_set.DEBIAN_PACKAGES:
        doc = root / name / "usr" / "share" / "doc" / name
        doc.mkdir(parents=True)
        (doc / "copyright").write_text(DEP5.format(name=name))
    walls = root / PLASMA / "usr" / "share" / "wallpapers"
    for i, wall in enumerate(["Path", "EveningGlow", "FallenLeaf", "Kite", "Autumn"]):
        images = walls / wall / "contents" / "images"
        images.mkdir(parents=True)
        _photo(i).save(images / "2560x1600.png")
        (images / "1280x800.png").write_bytes((images / "2560x1600.png").read_bytes())  # same bytes
        _photo(i).resize((408, 256)).save(images / "408x256.png")  # a smaller variant of the same image
        _photo(i).resize((200, 125)).save(walls / wall / "contents" / "screenshot.png")
    grey = walls / "Grey" / "contents" / "images"  # on the photograph list, but flat: dropped
    grey.mkdir(parents=True)
    Image.new("RGB", (816, 512), (90, 90, 90)).save(grey / "2560x1600.png")
    gnome = root / "gnome-backgrounds" / "usr" / "share" / "backgrounds" / "gnome"
    gnome.mkdir(parents=True)
    _photo(9).save(gnome / "wood-d.png")  # not on the list
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("tinyset")
    packages = _fake_packages(tmp / "packages")
    out = tmp / "set"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "ccsr", "data", "tiny-set", str(out), "--packages", str(packages)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads((out / "manifest.json").read_text()), proc


def test_split_is_by_source_image_and_every_used_file_is_recorded(built):
    out, manifest, proc = built
    assert "held-out crops" in proc.stdout
    by_image = {}
    for f in manifest["files"]:
        by_image.setdefault(f["image"], []).append(f)
    kept = {f["image"]: f for f in manifest["files"] if f["split"] != "dropped"}
    heldout = {i for i, f in kept.items() if f["split"] == "heldout"}
    assert heldout == set(tiny_set.HELDOUT)
    assert f"{PLASMA}/Kite" in kept and kept[f"{PLASMA}/Kite"]["split"] == "train"
    # Variants: the largest file is used, the same bytes and the smaller copy are dropped with a reason.
    kite = by_image[f"{PLASMA}/Kite"]
    assert kept[f"{PLASMA}/Kite"]["path"].endswith("1280x800.png")  # first path of the identical pair
    assert sorted(f["reason"].split(" ")[0] for f in kite if f["split"] == "dropped") == ["a", "same"]
    assert not any("screenshot" in f["path"] for f in manifest["files"])
    # Abstract art (not on the list) and a flat image (on the list) are dropped, each with its reason.
    assert "photograph list" in by_image[f"{PLASMA}/Autumn"][0]["reason"]
    assert "photograph list" in by_image["gnome-backgrounds/wood"][0]["reason"]
    assert by_image[f"{PLASMA}/Grey"][0]["reason"].startswith("flat fraction 1.0")
    # Every file records source, version, licence (from debian/copyright) and its real SHA-256.
    for f in manifest["files"]:
        assert f["source"] and f["version"] and f["licence"] and len(f["sha256"]) == 64
    assert kept[f"{PLASMA}/Kite"]["licence"] == "GPL-2+ (2014 Someone)"
    assert kept["skimage/chelsea"]["licence"].startswith("CC0")
    # No training file comes from a held-out source image.
    lines = [x for x in (out / "train" / "train.txt").read_text().splitlines() if not x.startswith("#")]
    assert lines and all((out / "train" / x).is_file() for x in lines)
    held_names = {h.split("/")[-1] for h in heldout}
    assert not any(x.rsplit("_s", 1)[0] in held_names for x in lines)
    assert {x.rsplit("_s", 1)[0] for x in lines} == {i.split("/")[-1] for i in kept} - held_names


def test_heldout_sets_have_enough_crops_and_lr_made_as_tiny_data(built):
    out, manifest, _ = built
    crops = manifest["heldout_crops"]
    assert len(crops) >= 20
    assert {c.rsplit("_", 1)[0] for c in crops} == {h.split("/")[-1] for h in tiny_set.HELDOUT}
    eval_manifest = json.loads((out / "eval" / "manifest.json").read_text())
    assert eval_manifest["realesrgan_seed"] == 2024 and set(eval_manifest["sources"]) >= {"Path", "chelsea"}
    for sub, side in (("gt", 256), ("lr_bicubic", 64), ("lr_realesrgan", 64)):
        files = sorted((out / "eval" / sub).glob("*.png"))
        assert [p.stem for p in files] == crops
        with Image.open(files[0]) as im:
            assert im.size == (side, side)
        digest = hashlib.sha256(files[0].read_bytes()).hexdigest()
        assert eval_manifest["files"][sub][files[0].name] == digest
    # The scikit-image crops are exactly the previous held-out set's (continuity of the benchmark).
    from ccsr.data.tiny_data import heldout_crops

    old = heldout_crops(256)["camera_01"]
    assert np.array_equal(np.asarray(Image.open(out / "eval" / "gt" / "camera_01.png")), old)


def test_build_is_deterministic_and_refuses_an_existing_output(tmp_path):
    packages = _fake_packages(tmp_path / "packages")
    photos = tuple(p for p in tiny_set.PYTHON_PHOTOGRAPHS if p.path.endswith(("chelsea.png", "coins.png")))
    kw = dict(python_photos=photos, heldout=(f"{PLASMA}/Path", "skimage/chelsea"), min_heldout_crops=7)
    a = tiny_set.build_tiny_set(tmp_path / "a", packages, **kw)
    b = tiny_set.build_tiny_set(tmp_path / "b", packages, **kw)
    assert a == b
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    before = sorted((tmp_path / "a").rglob("*"))
    with pytest.raises(FileExistsError, match="already exists"):
        tiny_set.build_tiny_set(tmp_path / "a", packages, **kw)
    assert sorted((tmp_path / "a").rglob("*")) == before
    with pytest.raises(ValueError, match="at least 99"):
        tiny_set.build_tiny_set(tmp_path / "c", packages, **{**kw, "min_heldout_crops": 99})
    assert not (tmp_path / "c").exists()


def test_licence_is_the_last_matching_dep5_paragraph(tmp_path):
    pkg = _fake_packages(tmp_path) / PLASMA
    assert licence_of(pkg, PLASMA, Path("usr/share/x/special-1.png")) == "CC-BY-SA-4.0 (2020 Other Person)"
    assert licence_of(pkg, PLASMA, Path("usr/share/x/other.png")) == "GPL-2+ (2014 Someone)"
    (pkg / "usr/share/doc" / PLASMA / "copyright").write_text("This package was debianized by ...\n")
    assert licence_of(pkg, PLASMA, Path("a.png")).startswith("not machine-readable")


def test_cli_refuses_an_existing_out_dir_with_exit_2(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "ccsr", "data", "tiny-set", str(out), "--packages", str(tmp_path / "none")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / "none").exists()
