"""`ccsr upscale` end to end on real files with the tiny random model (release layout on disk).

In-process runs go through ``ccsr.cli.main`` (the console script's function); the subprocess tests run
the installed ``ccsr`` script, ``python -m ccsr`` and ``accelerate launch -m ccsr``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import png_header_only
from PIL import Image, ImageCms

from ccsr.cli import main as ccsr_main
from ccsr.upscale.manifest import file_sha256


def photo(h: int, w: int, k: int = 0) -> np.ndarray:
    """A real photograph crop (scikit-image's astronaut), different for each ``k``."""
    from skimage import data

    y, x = 40 + 29 * k, 120 + 31 * k
    return np.ascontiguousarray(data.astronaut()[y : y + h, x : x + w])


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def simple_folder(root: Path, n: int, size=(16, 20)) -> Path:
    for k in range(n):
        save(root / f"img{k}.png", photo(size[0], size[1], k))
    return root


def tree_state(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (symlinks by target): to prove inputs are untouched."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "->" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = file_sha256(p)
    return out


def images_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".jpg", ".tif", ".webp", ".bmp")
    }


def manifest_lines(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "manifest.jsonl").read_text().splitlines() if ln.strip()]


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = ccsr_main(["upscale", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ---------------------------------------------------------------------------------------------- real folders
def test_folder_of_real_and_bad_files(tmp_path, capsys, common, tiny_model_dir):
    src = tmp_path / "photos"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "CCSR-Test-Camera"  # rotate 90 degrees clockwise when shown
    save(src / "a.png", photo(16, 24, 0))
    save(src / "b.jpg", photo(16, 24, 1), exif=exif.tobytes(), icc_profile=icc, quality=95)
    save(src / "c_rgba.png", np.dstack([photo(16, 16, 2), np.full((16, 16), 77, np.uint8)]), mode="RGBA")
    save(src / "d_gray.png", np.asarray(Image.fromarray(photo(16, 16, 3)).convert("L")))
    cv2.imwrite(str(src / "e16.png"), photo(16, 16, 4)[..., ::-1].astype(np.uint16) * 257 + 11)
    save(src / "f.webp", photo(16, 16, 5), lossless=True)
    save(src / "g.bmp", photo(16, 16, 6))
    save(src / "sub" / "deeper" / "h.tif", photo(16, 16, 7))
    (src / "zero.png").write_bytes(b"")
    (src / "text.jpg").write_text("not an image\n")
    whole = (src / "a.png").read_bytes()
    (src / "trunc.png").write_bytes(whole[: len(whole) // 2])
    (src / "bomb.png").write_bytes(png_header_only(60_000, 60_000))
    save(src / "tiny.png", photo(4, 4))
    os.symlink(src / "gone.png", src / "broken.png")
    (src / "notes.txt").write_text("ignored: not an image extension")
    before = tree_state(src)
    out = tmp_path / "out"

    rc, stdout, stderr = run(capsys, src, out, *common, "--recursive")

    assert rc == 1, stderr
    assert "8 done" in stdout and "6 failed" in stdout and "14 inputs" in stdout
    assert tree_state(src) == before  # nothing in the input folder written, moved or deleted
    fails = dict(line.split("\t") for line in (out / "failures.txt").read_text().splitlines())
    expect = {
        "zero.png": "empty file",
        "text.jpg": "not an image",
        "trunc.png": "truncated",
        "bomb.png": "decompression-bomb",
        "tiny.png": "too small",
        "broken.png": "broken symbolic link",
    }
    assert {Path(k).name: v for k, v in fails.items()}.keys() == expect.keys()
    for path, reason in fails.items():
        assert expect[Path(path).name] in reason
        assert f"FAILED {path}" in stderr  # one clear line per bad file on the console as well
    # outputs: x2, mirrored sub-folders, modes kept
    a = Image.open(out / "a.png")
    assert a.size == (48, 32) and a.mode == "RGB"
    b = Image.open(out / "b.png")
    assert b.size == (32, 48)  # EXIF orientation applied: 24x16 stored, 16x24 upright
    assert b.info["icc_profile"] == icc and b.getexif().get(0x010F) == "CCSR-Test-Camera"
    assert b.getexif().get(0x0112) in (None, 1)
    c = Image.open(out / "c_rgba.png")
    assert c.mode == "RGBA" and np.asarray(c)[..., 3].min() == np.asarray(c)[..., 3].max() == 77
    assert Image.open(out / "d_gray.png").mode == "L"
    e = cv2.imread(str(out / "e16.png"), cv2.IMREAD_UNCHANGED)
    assert e.dtype == np.uint16 and e.shape == (32, 32, 3) and len(np.unique(e)) > 256
    assert Image.open(out / "f.png").size == Image.open(out / "g.png").size == (32, 32)
    assert Image.open(out / "sub" / "deeper" / "h.png").size == (32, 32)
    assert not [p for p in out.rglob("*") if ".ccsr-tmp-" in p.name]
    # the records
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "complete" and rec["counts"]["outputs_written"] == 8
    assert rec["counts"]["failed_inputs"] == 6 and len(rec["failures"]) == 6
    s = rec["settings"]
    assert (s["steps"], s["guidance_scale"], s["scale"], s["color_fix"], s["num_inference_steps"]) == (
        1,
        1.0,
        2,
        "adain",
        1,
    )
    assert s["prompt"] == "clean, high-resolution, 8k" and s["precision"] == "fp32"
    cn = rec["model"]["components"]["controlnet"]
    weights = Path(cn["path"]) / "diffusion_pytorch_model.safetensors"
    assert cn["files"]["diffusion_pytorch_model.safetensors"] == file_sha256(weights)
    assert rec["environment"]["packages"]["torch"] and rec["timings"]["mean_image_s"] > 0
    lines = manifest_lines(out)
    assert sorted(ln["output"] for ln in lines) == sorted(
        ["a.png", "b.png", "c_rgba.png", "d_gray.png", "e16.png", "f.png", "g.png", "sub/deeper/h.png"]
    )
    for ln in lines:
        assert (ln["sample"], ln["seed"], ln["timesteps"]) == (0, 0, [999])
        assert ln["output_sha256"] == file_sha256(out / ln["output"])
        # the authors' post-processing is 8-bit: a 16-bit input keeps its precision through the float path
        assert ln["postprocess"] == ("float" if ln["output"] == "e16.png" else "reference")


def test_resume_skips_done_work_and_never_keeps_other_settings(tmp_path, capsys, common):
    src, out = simple_folder(tmp_path / "in", 2), tmp_path / "out"
    assert run(capsys, src, out, *common)[0] == 0
    first = images_under(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}

    rc, stdout, stderr = run(capsys, src, out, *common)
    assert rc == 0 and "skipping 2 images" in stderr and "0 done, 2 skipped" in stdout
    assert "model load 0.0 s" in stdout  # nothing to do: the model is not even loaded
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes

    (out / "img1.png").unlink()  # a lost output is redone, identically
    rc, stdout, _ = run(capsys, src, out, *common)
    assert rc == 0 and "1 done, 1 skipped" in stdout and images_under(out) == first

    for extra, why in [
        (["--steps", "2"], "steps: 1 -> 2"),
        (["--seed", "5"], "made with seed 0, this run uses seed 5"),
        (["--color-fix", "wavelet"], 'color_fix: "adain" -> "wavelet"'),
    ]:
        rc, _, stderr = run(capsys, src, out, *common, *extra)
        assert rc == 2 and why in stderr and "--overwrite" in stderr, stderr
        assert images_under(out) == first  # nothing written
    save(src / "img0.png", photo(16, 20, 9))  # the input changed since
    rc, _, stderr = run(capsys, src, out, *common)
    assert rc == 2 and "input file changed" in stderr

    rc, stdout, _ = run(capsys, src, out, *common, "--steps", "2", "--overwrite")
    assert rc == 0 and "2 done" in stdout
    lines = manifest_lines(out)
    assert len(lines) == 2 and {ln["timesteps"][-1] for ln in lines} == {499}
    rec = json.loads((out / "run.json").read_text())
    assert rec["settings"]["steps"] == 2 and len(rec["settings_history"]) == 2


def test_colour_fix_defaults_to_the_models_recommendation(tmp_path, capsys, common, tiny_model_dir):
    from ccsr.models.loading import INFERENCE_DEFAULTS, write_inference_defaults

    src = simple_folder(tmp_path / "in", 1)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_inference_defaults(model, "wavelet")  # as ccsr-tiny's release does
    settings = lambda out: json.loads((out / "run.json").read_text())["settings"]  # noqa: E731

    assert run(capsys, src, tmp_path / "rec", *common, "--model", model)[0] == 0
    assert settings(tmp_path / "rec")["color_fix"] == "wavelet"
    assert run(capsys, src, tmp_path / "explicit", *common, "--color-fix", "wavelet")[0] == 0
    assert images_under(tmp_path / "rec") == images_under(tmp_path / "explicit")  # same weights
    assert run(capsys, src, tmp_path / "adain", *common, "--model", model, "--color-fix", "adain")[0] == 0
    assert settings(tmp_path / "adain")["color_fix"] == "adain"
    assert images_under(tmp_path / "adain") != images_under(tmp_path / "rec")

    (model / INFERENCE_DEFAULTS).write_text('{"color_fix": "sepia"}')
    rc, _, stderr = run(capsys, src, tmp_path / "bad", *common, "--model", model)
    assert rc == 2 and INFERENCE_DEFAULTS in stderr and "sepia" in stderr, stderr
    assert not (tmp_path / "bad").exists() or not images_under(tmp_path / "bad")


def test_wavelet_levels_follow_the_model_unless_given(tmp_path, capsys, common, tiny_model_dir):
    from ccsr.models.loading import write_inference_defaults

    src = simple_folder(tmp_path / "in", 1)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_inference_defaults(model, "wavelet", wavelet_levels=3)  # as ccsr-tiny's release does
    settings = lambda out: json.loads((out / "run.json").read_text())["settings"]  # noqa: E731

    assert run(capsys, src, tmp_path / "rec", *common, "--model", model)[0] == 0
    assert settings(tmp_path / "rec")["wavelet_levels"] == 3
    assert run(capsys, src, tmp_path / "five", *common, "--model", model, "--wavelet-levels", "5")[0] == 0
    assert "wavelet_levels" not in settings(tmp_path / "five")  # the authors' value
    assert images_under(tmp_path / "five") != images_under(tmp_path / "rec")
    rc, _, stderr = run(capsys, src, tmp_path / "bad", *common, "--wavelet-levels", "0")
    assert rc == 2 and "--wavelet-levels 0: give 1 to 10" in stderr, stderr
    assert not (tmp_path / "bad").exists()


def test_postprocess_and_tile_window_are_recorded_and_resume_never_mixes_them(tmp_path, capsys, common):
    src = simple_folder(tmp_path / "in", 1)
    settings = lambda out: json.loads((out / "run.json").read_text())["settings"]  # noqa: E731
    assert run(capsys, src, tmp_path / "ref", *common)[0] == 0
    assert (settings(tmp_path / "ref")["postprocess"], settings(tmp_path / "ref")["tile_window"]) == (
        "reference",
        "reference",
    )
    other = ["--postprocess", "float", "--tile-window", "symmetric"]
    assert run(capsys, src, tmp_path / "flt", *common, *other)[0] == 0
    assert (settings(tmp_path / "flt")["postprocess"], settings(tmp_path / "flt")["tile_window"]) == (
        "float",
        "symmetric",
    )
    assert images_under(tmp_path / "ref") != images_under(tmp_path / "flt")
    first = images_under(tmp_path / "ref")
    for extra, why in [
        (["--postprocess", "float"], 'postprocess: "reference" -> "float"'),
        (["--tile-window", "symmetric"], 'tile_window: "reference" -> "symmetric"'),
    ]:
        rc, _, stderr = run(capsys, src, tmp_path / "ref", *common, *extra)
        assert rc == 2 and "made with settings" in stderr and why in stderr, stderr
        assert images_under(tmp_path / "ref") == first  # nothing written
    rc, _, stderr = run(capsys, src, tmp_path / "flt", *common)  # the defaults are the other values
    assert rc == 2 and 'postprocess: "float" -> "reference"' in stderr, stderr
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices
        run(capsys, src, tmp_path / "x", *common, "--postprocess", "8bit")
    assert exit_info.value.code == 2 and "--postprocess" in capsys.readouterr().err


def test_a_768px_v_prediction_base_is_refused_before_any_work(tmp_path, capsys, common, tiny_model_dir):
    src = simple_folder(tmp_path / "in", 1)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    base = model / "stable-diffusion-2-1-base"
    for path, key, value in [
        (base / "scheduler" / "scheduler_config.json", "prediction_type", "v_prediction"),
        (base / "unet" / "config.json", "sample_size", 96),
    ]:
        path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    rc, _, stderr = run(capsys, src, tmp_path / "out", *common, "--model", model)
    assert rc == 2 and str(base) in stderr and "stable-diffusion-2-1-base as the base" in stderr, stderr
    assert not (tmp_path / "out").exists() or not images_under(tmp_path / "out")


def test_byte_identical_and_seed_k_independent_of_neighbours(tmp_path, capsys, common):
    src = simple_folder(tmp_path / "in", 2)
    assert run(capsys, src, tmp_path / "a", *common, "--samples", "2")[0] == 0
    # the second run does everything in the main thread: background I/O changes no byte
    assert run(capsys, src, tmp_path / "b", *common, "--samples", "2", "--workers", "0")[0] == 0
    a = images_under(tmp_path / "a")
    assert sorted(a) == ["sample00/img0.png", "sample00/img1.png", "sample01/img0.png", "sample01/img1.png"]
    assert a == images_under(tmp_path / "b")  # same command twice: byte-identical
    assert a["sample00/img0.png"] != a["sample01/img0.png"]  # seeds differ
    # sample 1 of img1 (seed 1) equals img1 run alone with seed 1
    assert run(capsys, src / "img1.png", tmp_path / "alone", *common, "--seed", "1")[0] == 0
    assert (tmp_path / "alone" / "img1.png").read_bytes() == a["sample01/img1.png"]


def test_step_sweep_layout_quiet_and_jsonl(tmp_path, capsys, common):
    src = simple_folder(tmp_path / "in", 1)
    out, log = tmp_path / "sweep", tmp_path / "events.jsonl"
    rc, stdout, stderr = run(
        capsys, src, out, *common, "--steps", "1", "2", "--samples", "2", "--quiet", "--log-jsonl", log
    )
    assert rc == 0 and stdout == "" and stderr == ""
    assert not (out / "run.json").exists()
    for steps, ts, g in [(1, [999], 1.0), (2, [999, 499], 4.5)]:
        run_dir = out / f"steps{steps}"
        assert sorted(images_under(run_dir)) == ["sample00/img0.png", "sample01/img0.png"]
        assert {tuple(ln["timesteps"]) for ln in manifest_lines(run_dir)} == {tuple(ts)}
        rec = json.loads((run_dir / "run.json").read_text())
        assert rec["settings"]["steps"] == steps and rec["settings"]["guidance_scale"] == g
    events = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "image", "summary"]
    assert events[1]["outputs"] == 4 and events[2]["done"] == 1


def test_tiled_agrees_with_untiled_and_shows_no_seam(tmp_path, capsys, tiny_model_dir):
    from ccsr.tiling import tile_windows

    src = tmp_path / "in"
    save(src / "p.png", photo(32, 48, 0))
    base = ["--model", tiny_model_dir, "--scale", "2", "--process-size", "0"]
    assert run(capsys, src, tmp_path / "plain", *base, "--tiling", "off", "--vae-tiling", "off")[0] == 0
    tiled = [
        "--tile-threshold",
        "1000",
        "--tile-size",
        "32",
        "--tile-stride",
        "16",
    ]  # auto: 96x64 canvas > 1000 px
    assert run(capsys, src, tmp_path / "tiled", *base, *tiled)[0] == 0
    assert (
        manifest_lines(tmp_path / "tiled")[0]["tiled"] and not manifest_lines(tmp_path / "plain")[0]["tiled"]
    )
    a = np.asarray(Image.open(tmp_path / "plain" / "p.png"), np.float64) / 255
    b = np.asarray(Image.open(tmp_path / "tiled" / "p.png"), np.float64) / 255
    assert 10 * np.log10(1 / ((a - b) ** 2).mean()) > 30  # PSNR in dB: close agreement
    # seam check: the vertical/horizontal gradient at every tile border of the tiled output is no
    # larger than at the same rows/columns of the untiled output, nor than elsewhere in the image
    wins = tile_windows(64 // 8, 96 // 8, 32 // 8, 16 // 8)
    rows = sorted({8 * e - 1 for y, _, th, _ in wins for e in (y, y + th) if 0 < e < 8})
    cols = sorted({8 * e - 1 for _, x, _, tw in wins for e in (x, x + tw) if 0 < e < 12})
    gy_b, gy_a = (np.abs(np.diff(im, axis=0)).mean(axis=(1, 2)) for im in (b, a))
    gx_b, gx_a = (np.abs(np.diff(im, axis=1)).mean(axis=(0, 2)) for im in (b, a))
    assert gy_b[rows].mean() <= 1.1 * gy_a[rows].mean() and gx_b[cols].mean() <= 1.1 * gx_a[cols].mean()
    assert gy_b[rows].mean() <= 1.25 * np.delete(gy_b, rows).mean()
    assert gx_b[cols].mean() <= 1.25 * np.delete(gx_b, cols).mean()
    # an input smaller than one tile works (csslc/CCSR#50)
    rc, _, err = run(
        capsys, src, tmp_path / "small", *base, "--tiling", "on", "--vae-tiling", "on", "--tile-size", "512"
    )
    assert rc == 0, err


def test_output_inside_input_and_overlaps_never_touch_inputs(tmp_path, capsys, common):
    src = simple_folder(tmp_path / "in", 2)
    (src / "nested").mkdir()
    save(src / "nested" / "n.png", photo(16, 16, 4))
    before = tree_state(src)
    inner = src / "upscaled"
    rc, stdout, _ = run(capsys, src, inner, *common, "-r")
    assert rc == 0 and "3 inputs: 3 done" in stdout
    assert {k: v for k, v in tree_state(src).items() if not k.startswith("upscaled")} == before
    rc, stdout, _ = run(capsys, src, inner, *common, "-r")  # its own outputs are not read back as inputs
    assert rc == 0 and "3 inputs: 0 done, 3 skipped" in stdout

    rc, _, err = run(capsys, src, src, *common)
    assert rc == 2 and "is the input folder" in err
    rc, _, err = run(capsys, src / "img0.png", src, *common)
    assert rc == 2 and "would overwrite the input file" in err
    raw = tmp_path / "top" / "raw"
    save(raw / "raw" / "q.png", photo(16, 16, 5))  # its output top/raw/q.png would land in the input folder
    rc, _, err = run(capsys, raw, tmp_path / "top", *common, "-r")
    assert rc == 2 and "inside the input folder" in err
    assert tree_state(raw) == {"raw/q.png": file_sha256(raw / "raw" / "q.png")}
    assert {k: v for k, v in tree_state(src).items() if not k.startswith("upscaled")} == before

    clash = tmp_path / "clash"
    save(clash / "x.png", photo(16, 16, 1))
    save(clash / "x.jpg", photo(16, 16, 2))
    rc, stdout, _ = run(capsys, clash, tmp_path / "clash_out", *common)
    fails = (tmp_path / "clash_out" / "failures.txt").read_text()
    assert rc == 1 and "1 done" in stdout and "x.png\tits output name x.png is already that of" in fails


def test_arguments_refused_before_any_work(tmp_path, capsys, common, monkeypatch, tiny_model_dir):
    src = simple_folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    monkeypatch.delenv("CCSR_MODEL", raising=False)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "controlnet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    cases = [
        ([src, out], "no model"),
        (
            [src, out, *common, "--steps", "1", "2", "--num-inference-steps", "6"],
            "cannot be combined with a sweep",
        ),
        ([src, out, *common, "--t-min", "0.5"], "the truncated loop is empty"),
        ([tmp_path / "nope", out, *common], "does not exist"),
        ([src, out, "--model", tmp_path / "no-model"], "does not exist"),
        ([src, out, *common, "--tile-size", "100"], "multiples of 8"),
        ([src], "at least one input and the output folder"),
        ([empty, out, *common], "no images found"),
        ([src, out, "--model", broken], "could not load --model"),
        ([src, out, *common, "--device", "warp-drive"], "is not a device torch knows"),
    ]
    from ccsr.models.shipped import TINY_MODEL_DIR

    if not TINY_MODEL_DIR.is_dir():
        cases.append(([src, out, "--model", "tiny"], "ccsr-tiny model is not part of this installation"))
    for argv, message in cases:
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and message in err, (argv, err)
    assert not list(out.glob("*.png"))


def test_report_hook(tmp_path, capsys, common, monkeypatch):
    src = simple_folder(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "ccsr.metrics.report", None)  # as if the metrics part were absent
    rc, _, err = run(capsys, src, tmp_path / "out", *common, "--report")
    assert (
        rc == 1 and "--report needs ccsr.metrics.report" in err and (tmp_path / "out" / "img0.png").is_file()
    )
    monkeypatch.delitem(sys.modules, "ccsr.metrics.report")
    pytest.importorskip("ccsr.metrics.report")
    rc, stdout, err = run(
        capsys, src, tmp_path / "out2", *common, "--samples", "2", "--report", "--metrics", "psnr"
    )
    assert rc == 0, err
    assert (tmp_path / "out2" / "report.html").is_file() and "report:" in stdout


# ---------------------------------------------------------------------------------------------- subprocesses
def _console_script() -> str:
    exe = Path(sys.executable).parent / "ccsr"
    assert exe.is_file(), f"the console script {exe} is missing: install the package (pip install -e .)"
    return str(exe)


def _wait_for_outputs(proc: subprocess.Popen, manifest: Path, n: int, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if manifest.is_file() and len(manifest.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {n} outputs within {timeout} s")


# Inputs large enough that one image takes a noticeable time, so the run cannot finish before
# the signal arrives even on a fast idle machine (16x20 inputs take 0.04 s each there).
SLOW_INPUT = (96, 80)


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_outputs(tmp_path, capsys, common):
    src = simple_folder(tmp_path / "in", 6, size=SLOW_INPUT)
    out, ref = tmp_path / "out", tmp_path / "ref"
    proc = subprocess.Popen(
        [_console_script(), "upscale", str(src), str(out), *map(str, common), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_for_outputs(proc, out / "manifest.jsonl", 1)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    done_at_kill = [p for p in out.glob("img*.png")]
    # (the first output may still be waiting for its rename: its manifest line is written first)
    assert len(done_at_kill) < 6, "the run finished before it could be killed"
    for p in done_at_kill:  # whatever carries an output name is a complete image
        Image.open(p).load()
    rc, stdout, _ = run(capsys, src, out, *common)
    assert rc == 0 and f"{len(done_at_kill)} skipped" in stdout
    assert run(capsys, src, ref, *common)[0] == 0
    assert images_under(out) == images_under(ref)
    assert [ln["output"] for ln in manifest_lines(out)] == [ln["output"] for ln in manifest_lines(ref)]
    assert not [p for p in out.rglob("*") if ".ccsr-tmp-" in p.name]


def test_ctrl_c_stops_cleanly_and_rerun_resumes(tmp_path, capsys, common):
    src = simple_folder(tmp_path / "in", 6, size=SLOW_INPUT)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ccsr", "upscale", str(src), str(out), *map(str, common)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an
        # ignored SIGINT ignored: restore the default so the child sees Ctrl-C as a terminal user's would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for_outputs(proc, out / "manifest.jsonl", 1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout and "run the same command again to resume" in stdout
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "interrupted"
    done = sorted(p.name for p in out.glob("img*.png"))
    assert 1 <= len(done) < 6 and sorted(ln["output"] for ln in manifest_lines(out)) == done
    assert not [p for p in out.rglob("*") if ".ccsr-tmp-" in p.name]
    rc, stdout, _ = run(capsys, src, out, *common)
    assert rc == 0 and f"{6 - len(done)} done, {len(done)} skipped" in stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_two_processes_shard_and_match_one_process(tmp_path, capsys, common):
    import torch

    src = simple_folder(tmp_path / "in", 5)
    (src / "broken.png").write_bytes(b"\x89PNG but not really")
    out, log = tmp_path / "out", tmp_path / "events.jsonl"
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd += [
        "-m",
        "ccsr",
        "upscale",
        str(src),
        str(out),
        *map(str, common),
        "--device",
        "cpu",
        "--log-jsonl",
        str(log),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode != 0, "the broken file must make the run fail"  # and it must be the only failure
    assert "5 done" in proc.stdout and "1 failed" in proc.stdout, proc.stdout + proc.stderr
    rec = json.loads((out / "run.json").read_text())
    assert rec["environment"]["processes"] == 2 and rec["counts"]["outputs_written"] == 5
    assert (out / "failures.txt").read_text().count("\n") == 1
    outputs = [ln["output"] for ln in manifest_lines(out)]
    assert sorted(outputs) == [f"img{k}.png" for k in range(5)]  # each image exactly once
    ranks = {e["rank"] for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "image"}
    assert ranks == {0, 1}
    assert not list(out.glob(".ccsr-rank*"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the launched processes ran with OMP_NUM_THREADS=1; compare like with like
    try:
        assert run(capsys, src, tmp_path / "single", *common)[0] == 1
    finally:
        torch.set_num_threads(threads)
    assert images_under(out) == images_under(tmp_path / "single")
