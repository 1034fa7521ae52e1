"""`ccsr upscale --samples K --uncertainty-map / --select` through the installed console script.

The tiny random model (tests/conftest.py) on real photograph crops; every run is a subprocess of the
``ccsr`` script, as a user runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccsr.consistency import uncertainty_map
from ccsr.upscale.manifest import file_sha256


def photo(h: int, w: int, k: int) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(
        data.astronaut()[40 + 29 * k : 40 + 29 * k + h, 120 + 31 * k : 120 + 31 * k + w]
    )


def ccsr(*argv) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "ccsr"
    assert exe.is_file(), f"the console script {exe} is missing: install the package (pip install -e .)"
    return subprocess.run([str(exe), *map(str, argv)], capture_output=True, text=True, timeout=600)


def manifest(run: Path) -> dict[str, dict]:
    lines = [json.loads(ln) for ln in (run / "manifest.jsonl").read_text().splitlines() if ln.strip()]
    return {ln["output"]: ln for ln in lines}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture()
def setup(tmp_path, tiny_model_dir):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        Image.fromarray(photo(16, 20, k)).save(src / f"img{k}.png")
    common = [
        "--model",
        tiny_model_dir,
        "--scale",
        "2",
        "--process-size",
        "32",
        "--samples",
        "3",
        "--seed",
        "7",
    ]
    return src, common


def test_uncertainty_map_written_recorded_and_resumed(tmp_path, setup):
    src, common = setup
    out = tmp_path / "out"
    r = ccsr("upscale", src, out, *common, "--uncertainty-map")
    assert r.returncode == 0, r.stderr
    assert "2 done" in r.stdout and "4 outputs each" in r.stdout
    rec = manifest(out)
    for k in range(2):
        samples = [pixels(out / f"sample{s:02d}" / f"img{k}.png") for s in range(3)]
        assert samples[0].shape == (32, 40, 3)
        heat = Image.open(out / f"img{k}_std.png")
        assert heat.mode == "RGB" and heat.size == (40 + 66, 96)  # the map at output size + its colour bar
        line = rec[f"img{k}_std.png"]
        assert line["kind"] == "uncertainty_map" and line["seeds"] == [7, 8, 9] and line["seed"] == 7
        assert line["output_sha256"] == file_sha256(out / f"img{k}_std.png")
        # computed on the float outputs, before rounding: within half a grey level of the files' map
        assert abs(line["std_mean"] - float(uncertainty_map(samples).mean())) < 0.5 / 255
        assert line["std_max"] >= line["std_mean"] > 0
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["counts"]["outputs_written"] == 8
    # the run folder still reads as a 3-sample run (the maps are not taken for outputs)
    from ccsr.metrics.readers import open_run

    assert open_run(out).num_samples == 3 and open_run(out).names == ("img0.png", "img1.png")

    # resume: a lost heat map is remade from recomputed samples; finished sample files are not rewritten
    heat0 = (out / "img0_std.png").read_bytes()
    (out / "img0_std.png").unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("sample*/*.png")}
    r = ccsr("upscale", src, out, *common, "--uncertainty-map")
    assert r.returncode == 0, r.stderr
    assert "1 done, 1 skipped" in r.stdout
    assert (out / "img0_std.png").read_bytes() == heat0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("sample*/*.png")} == mtimes
    r = ccsr("upscale", src, out, *common, "--uncertainty-map")
    assert r.returncode == 0 and "0 done, 2 skipped" in r.stdout, r.stdout + r.stderr


def test_select_consensus_and_mean_write_one_output_per_image(tmp_path, setup):
    src, common = setup
    every, cons, mean = tmp_path / "every", tmp_path / "cons", tmp_path / "mean"
    r = ccsr("upscale", src, every, *common)
    assert r.returncode == 0, r.stderr
    r = ccsr("upscale", src, cons, *common, "--select", "consensus", "--uncertainty-map")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in cons.iterdir() if p.suffix == ".png") == [
        "img0.png",
        "img0_std.png",
        "img1.png",
        "img1_std.png",
    ]
    assert not list(cons.glob("sample*"))
    rec = manifest(cons)
    for k in range(2):
        line = rec[f"img{k}.png"]
        samples = [pixels(every / f"sample{s:02d}" / f"img{k}.png").astype(float) for s in range(3)]
        assert line["select"] == "consensus" and line["distance"] == "l1-y" and line["seeds"] == [7, 8, 9]
        d = np.array(line["distances"])
        assert d.shape == (3, 3) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
        assert line["mean_distances"] == pytest.approx(list(d.sum(1) / 2), abs=1e-5)
        chosen = line["chosen_sample"]
        assert chosen == int(np.argmin(line["mean_distances"])) and line["chosen_seed"] == 7 + chosen
        # the pick is that sample, bit for bit, as a plain --samples run writes it
        assert np.array_equal(pixels(cons / f"img{k}.png"), samples[chosen])
    settings = json.loads((cons / "run.json").read_text())["settings"]
    assert settings["select"] == {"mode": "consensus", "samples": 3, "distance": "l1-y"}

    r = ccsr("upscale", src, mean, *common, "--select", "mean")
    assert r.returncode == 0, r.stderr
    for k in range(2):
        samples = [pixels(every / f"sample{s:02d}" / f"img{k}.png").astype(float) for s in range(3)]
        got = pixels(mean / f"img{k}.png").astype(float)
        # the float mean rounded once: within one grey level of the mean of the rounded samples
        assert np.abs(got - np.mean(samples, axis=0)).max() <= 1.0
        assert manifest(mean)[f"img{k}.png"]["select"] == "mean"

    # another selection into the same folder is refused before any work
    r = ccsr("upscale", src, cons, *common, "--select", "mean")
    assert r.returncode == 2 and "--overwrite" in r.stderr and "select.mode" in r.stderr, r.stderr


def test_consistency_options_need_several_samples_and_available_weights(tmp_path, setup, monkeypatch):
    src, common = setup
    from ccsr.cli import main

    assert main(["upscale", str(src), str(tmp_path / "o"), "--model", "tiny", "--uncertainty-map"]) == 2
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    r = ccsr(
        "upscale", src, tmp_path / "o", *common, "--select", "consensus", "--consensus-distance", "lpips"
    )
    assert r.returncode == 2 and "LPIPS" in r.stderr and "l1-y" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
