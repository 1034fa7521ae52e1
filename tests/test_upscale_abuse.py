"""`ccsr upscale` used as a hostile user would: oversized metadata, odd file names, huge outputs, two runs
into one folder, dead locks, unwritable folders, gray variants. Real files, the real console script (or
``ccsr.cli.main``, the function behind it); every test checks what lands on disk, what the user is told,
the exit status, and that nothing else is lost."""

from __future__ import annotations

import base64
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from helpers import png_header_only
from PIL import Image, ImageCms
from test_upscale import (
    SLOW_INPUT,
    _console_script,
    _wait_for_outputs,
    images_under,
    manifest_lines,
    photo,
    run,
    save,
    simple_folder,
    tree_state,
)

from ccsr.encode import png16


def _ccsr(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_console_script(), "upscale", *map(str, argv)], capture_output=True, text=True, timeout=300, **kw
    )


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _png_colour(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's IHDR: colour type 0 gray, 4 gray+alpha, 2 RGB, 6 RGBA."""
    data = path.read_bytes()
    assert data[12:16] == b"IHDR"
    return data[24], data[25]


# ---------------------------------------------------------------------------------------------- 1. metadata
def test_metadata_the_format_cannot_hold_never_costs_the_output(tmp_path, common):
    src = tmp_path / "in"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010E], exif[0x010F] = "x" * 1_000_000, "CCSR-Test-Camera"  # a legal 1 MB eXIf chunk
    save(src / "big_exif.png", photo(16, 20, 0), exif=exif.tobytes(), icc_profile=icc)
    save(src / "plain.png", photo(16, 20, 1))
    assert len(Image.open(src / "big_exif.png").getexif().tobytes()) > 1_000_000
    before = tree_state(src)
    out = tmp_path / "out"

    p = _ccsr(src, out, *common, "--format", "jpg")

    assert p.returncode == 0, p.stderr
    assert tree_state(src) == before
    jpg = Image.open(out / "big_exif.jpg")
    assert jpg.size == (40, 32) and jpg.info["icc_profile"] == icc  # the profile fits and is kept
    assert jpg.getexif().get(0x0112) == 1 and 0x010E not in jpg.getexif()  # orientation kept, the rest not
    assert Image.open(out / "plain.jpg").size == (40, 32)
    assert "EXIF reduced to its orientation tag" in p.stderr and "EXIF data is too long" in p.stderr
    rec = json.loads((out / "run.json").read_text())
    assert rec["counts"]["outputs_written"] == 2 and rec["failures"] == []
    assert any("EXIF reduced" in n for n in rec["notes"])
    entry = {ln["output"]: ln for ln in manifest_lines(out)}["big_exif.jpg"]
    assert any("EXIF reduced" in n for n in entry["notes"])


# ---------------------------------------------------------------------------------------------- 3 + 10. lock
def test_second_run_into_the_same_folder_is_refused_at_once(tmp_path, common):
    src = simple_folder(tmp_path / "in", 4, size=SLOW_INPUT)
    out = tmp_path / "out"
    first = subprocess.Popen(
        [_console_script(), "upscale", str(src), str(out), *map(str, common), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_outputs(first, out / "manifest.jsonl", 1)
        lock = json.loads((out / ".ccsr-lock").read_text())
        assert lock["pid"] == first.pid
        t = time.monotonic()
        second = _ccsr(src, out, *common)
        took = time.monotonic() - t
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert second.returncode == 2 and took < 30, second.stderr
    msg = second.stderr
    assert f"OUTPUT_DIR {out} is in use" in msg and f"pid {first.pid}" in msg and lock["started"] in msg
    assert "Wait for it to finish" in msg and "another OUTPUT_DIR" in msg
    assert len(msg.strip().splitlines()) == 1  # one clear line, no traceback
    # the first run was not disturbed: every image once, its own records, the lock gone
    assert first.returncode == 0, stderr
    assert sorted(ln["output"] for ln in manifest_lines(out)) == [f"img{k}.png" for k in range(4)]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not (out / ".ccsr-lock").exists()
    # after it, the same command resumes (nothing to do) without complaint
    again = _ccsr(src, out, *common)
    assert again.returncode == 0 and "0 done, 4 skipped" in again.stdout


def test_dead_runs_lock_is_taken_over_and_only_orphan_temps_are_removed(tmp_path, common):
    src = simple_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    (out / ".ccsr-lock").write_text(json.dumps({"pid": dead, "host": "gone", "started": "2020-01-01"}))
    orphan = out / f".img0.png.ccsr-tmp-{dead}-1"  # left by a killed run
    alive = out / f".other.png.ccsr-tmp-{os.getpid()}-1"  # a file in flight of a live process
    orphan.write_bytes(b"half an image")
    alive.write_bytes(b"in flight")

    p = _ccsr(src, out, *common)

    assert p.returncode == 0, p.stderr
    assert sorted(images_under(out)) == ["img0.png", "img1.png"]
    assert not orphan.exists() and alive.read_bytes() == b"in flight"
    assert not (out / ".ccsr-lock").exists()


# ---------------------------------------------------------------------------------------------- 4. names
def test_any_legal_file_name_round_trips_through_the_failure_list(tmp_path, capsys, common):
    src = tmp_path / "in"
    src.mkdir()
    bad_names = [
        "new\nline.png",
        "tab\there.png",
        "quo\"te's.png",
        "back\\slash.png",
        os.fsdecode(b"latin1-\xe9t\xe9.png"),  # not UTF-8
        "b" * 240 + ".png",
    ]
    good_names = ["good\nnewline.png", os.fsdecode(b"good-\xff.png"), "g" * 250 + ".png"]
    for name in bad_names:
        (src / name).write_bytes(b"not an image at all")
    for k, name in enumerate(good_names):
        save(src / name, photo(16, 16, k))
    out = tmp_path / "out"

    rc, _, stderr = run(capsys, src, out, *common)

    assert rc == 1
    records = [json.loads(ln) for ln in (out / "failures.jsonl").read_text(encoding="ascii").splitlines()]
    got = set()
    for r in records:
        raw = base64.b64decode(r["input_b64"]) if "input_b64" in r else r["input"].encode("utf-8")
        assert os.fsencode(r["input"]) == raw
        got.add(raw)
    assert got == {os.fsencode(src / n) for n in bad_names}
    assert all("not an image" in r["reason"] for r in records)
    lines = (out / "failures.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == len(bad_names) + 1  # one line per failure, always
    fields = [ln.split("\t") for ln in lines[:-1]]
    assert all(len(f) == 2 for f in fields)
    assert {f[0].rsplit("/", 1)[1] for f in fields} >= {
        "new\\nline.png",
        "tab\\there.png",
        "latin1-\\xe9t\\xe9.png",
    }
    assert "FAILED " + str(src) + "/new\\nline.png: not an image" in stderr
    # the good images with odd names are all written, recorded, and resumable
    for name in good_names:
        assert Image.open(out / name).size == (32, 32)
    assert {ln["output"] for ln in manifest_lines(out)} == set(good_names)
    rc, stdout, _ = run(capsys, src, out, *common)
    assert rc == 1 and "0 done, 3 skipped" in stdout


# ---------------------------------------------------------------------------------------------- 5 + 9. sizes
def test_oversize_output_and_canvas_refused_before_any_work(tmp_path, tiny_model_dir):
    src = tmp_path / "in"
    src.mkdir()
    (src / "photo4k.png").write_bytes(png_header_only(3840, 2160))  # x2 -> 7680x4320 = 33.2 MP
    # process size 64 at x2: the short side 8 is enlarged to 32, then x2: a 16000x64 canvas
    save(src / "strip.png", np.tile(photo(8, 250, 0), (1, 8, 1)))
    assert Image.open(src / "strip.png").size == (2000, 8)
    save(src / "ok.png", photo(16, 20, 1))
    out = tmp_path / "out"
    fast = ["--model", tiny_model_dir, "--scale", "2", "--process-size", "64"]
    t = time.monotonic()
    p = _ccsr(src, out, *fast, "--max-output-pixels", "900000")
    took = time.monotonic() - t
    assert p.returncode == 1, p.stderr
    fails = {json.loads(ln)["input"]: json.loads(ln)["reason"] for ln in (out / "failures.jsonl").open()}
    big = fails[str(src / "photo4k.png")]
    assert "3840x2160 at --scale 2 is 7680x4320 = 33.2 MP" in big
    assert "--max-output-pixels 0.9 MP" in big and "lower --scale or raise --max-output-pixels" in big
    strip = fails[str(src / "strip.png")]
    assert "canvas too large" in strip and "16000x64 = 1.0 MP" in strip and "--process-size 64" in strip
    assert f"FAILED {src / 'photo4k.png'}: output too large" in p.stderr
    assert sorted(images_under(out)) == ["ok.png"]  # the rest of the run is done
    assert took < 120
    # the default limit is 64 MP: the 4K photo at the default x4 (132.7 MP) is refused without the
    # option too, and a run with nothing left to do never loads the model
    (src / "ok.png").unlink()
    (src / "strip.png").unlink()
    p = _ccsr(src, tmp_path / "out2", "--model", tiny_model_dir)
    assert p.returncode == 1 and "15360x8640 = 132.7 MP" in p.stderr, p.stderr
    assert "above --max-output-pixels 64.0 MP" in p.stderr and "model load 0.0 s" in p.stdout


def test_bomb_message_names_our_limit_not_pillows(tmp_path, capsys, common):
    src = tmp_path / "in"
    src.mkdir()
    (src / "bomb.png").write_bytes(png_header_only(60_000, 60_000))
    rc, _, stderr = run(capsys, src, tmp_path / "out", *common)
    assert rc == 1 and "3600.0 MP is above the limit of 64.0 MP" in stderr and "--max-pixels" in stderr
    assert "178956970" not in stderr and "89478485" not in stderr


def test_progress_per_tile_and_estimate_in_the_event_log(tmp_path, capsys, common):
    src = tmp_path / "in"
    save(src / "p.png", photo(32, 48, 0))
    log = tmp_path / "events.jsonl"
    tiles = ["--tiling", "on", "--tile-size", "32", "--tile-stride", "16", "--log-jsonl", log]
    rc, _, err = run(capsys, src, tmp_path / "out", *common, "--process-size", "0", *tiles, "--steps", "2")
    assert rc == 0, err
    events = [json.loads(ln) for ln in log.read_text().splitlines()]
    start = events[0]
    assert start["event"] == "start" and start["output_megapixels"] == round(96 * 64 / 1e6, 3)
    ticks = [(e["done"], e["total"]) for e in events if e["event"] == "tile"]
    # a 96x64 canvas is a 12x8 latent: 32-px tiles at stride 16 give 5x3 windows, 2 evaluations
    assert ticks[-1] == (30, 30) and [d for d, _ in ticks] == sorted({d for d, _ in ticks})
    kinds = [e["event"] for e in events]
    assert kinds.index("image") > max(i for i, k in enumerate(kinds) if k == "tile")


# ---------------------------------------------------------------------------------------------- 6. folders
def test_output_folder_that_cannot_be_created_or_written_is_refused_first(tmp_path, tiny_model_dir):
    src = simple_folder(tmp_path / "in", 1)
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should be")
    code = (
        "import sys; from ccsr.cli import main; rc = main(sys.argv[1:]); "
        "print(rc, 'torch' in sys.modules); sys.stdout.flush()"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, "upscale", src, blocker / "out", "--model", tiny_model_dir],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.stdout.split() == ["2", "False"], p.stderr  # refused before torch was even imported
    assert p.stderr.count("\n") == 1 and f"OUTPUT_DIR {blocker / 'out'} cannot be written" in p.stderr

    # an existing folder the run may not write to (a read-only mount, or no space left: here no file
    # may grow past 0 bytes)
    out = tmp_path / "ro"
    out.mkdir()
    p = _ccsr(
        src,
        out,
        "--model",
        tiny_model_dir,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)),
    )
    assert p.returncode == 2 and "cannot be written (File too large)" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and list(out.iterdir()) == []
    if os.geteuid() != 0:  # permissions bind everyone but root
        out.chmod(0o555)
        try:
            p = _ccsr(src, out, "--model", tiny_model_dir)
        finally:
            out.chmod(0o755)
        assert p.returncode == 2 and "cannot be written (Permission denied)" in p.stderr, p.stderr


def test_folder_that_stops_taking_files_mid_run_stops_with_a_summary(tmp_path, capsys, common):
    src = tmp_path / "in"
    for k in range(2):
        save(src / f"a{k}.png", photo(16, 20, k))
    save(src / "b_big.png", photo(120, 160, 5))  # its output is far larger than the others'
    for k in range(2):
        save(src / f"c{k}.png", photo(16, 20, 2 + k))
    out = tmp_path / "out"
    limit = 60_000  # bytes per file: small outputs and the records fit, the big output does not
    p = _ccsr(
        src,
        out,
        *common,
        "--workers",
        "0",
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert "ccsr upscale stopped: 5 inputs: 2 done" in p.stdout and "2 not started" in p.stdout
    assert "cannot be written (File too large)" in p.stdout
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "stopped" and "cannot be written" in rec["stop_reason"]
    assert [f["input"] for f in rec["failures"]] == [str(src / "b_big.png")]
    assert sorted(images_under(out)) == ["a0.png", "a1.png"]
    assert not [q for q in out.iterdir() if ".ccsr-tmp-" in q.name]
    rc, stdout, _ = run(capsys, src, out, *common)  # space again: the same command finishes the job
    assert rc == 0 and "3 done, 2 skipped" in stdout


# ---------------------------------------------------------------------------------------------- 7. order
def test_mistyped_input_is_reported_before_torch_is_imported(tmp_path, tiny_model_dir):
    code = "import sys; from ccsr.cli import main; rc = main(sys.argv[1:]); print(rc, 'torch' in sys.modules)"
    for argv, message in [
        ([tmp_path / "no-such-folder", tmp_path / "out", "--model", tiny_model_dir], "does not exist"),
        ([simple_folder(tmp_path / "in", 1), tmp_path / "out", "--model", tmp_path / "nomodel"], "--model"),
    ]:
        p = subprocess.run(
            [sys.executable, "-c", code, "upscale", *map(str, argv)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.stdout.split() == ["2", "False"] and message in p.stderr, p.stderr
    p = _ccsr(tmp_path / "no-such-folder", tmp_path / "out", "--model", tiny_model_dir)
    assert p.returncode == 2 and "input" in p.stderr and "does not exist" in p.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- 8. gray
def test_every_gray_variant_stays_gray(tmp_path, capsys, common):
    rs = np.random.RandomState(0)
    src = tmp_path / "in"
    src.mkdir()
    g8 = np.asarray(Image.fromarray(photo(16, 16, 0)).convert("L"))
    a8 = rs.randint(1, 256, (16, 16), dtype=np.uint8)
    g16 = g8.astype(np.uint16) * 257 + 3
    a16 = a8.astype(np.uint16) * 257
    Image.fromarray(g8).save(src / "l.png")
    Image.fromarray(np.dstack([g8, a8]), "LA").save(src / "la.png")
    Image.fromarray(g16).save(src / "i16.png")
    (src / "la16.png").write_bytes(png16(np.dstack([g16, a16])))
    assert Image.open(src / "la16.png").mode == "RGBA"  # what Pillow makes of it: the trap
    Image.fromarray(g8).save(src / "gray.tif")
    Image.fromarray(np.dstack([g8, a8]), "LA").save(src / "gray_alpha.tif")
    cv2.imwrite(str(src / "gray16.tif"), g16)

    rc, _, err = run(capsys, src, tmp_path / "out", *common)

    assert rc == 0, err
    out = tmp_path / "out"
    expect = {"l": (8, 0), "la": (8, 4), "i16": (16, 0), "la16": (16, 4)}
    expect |= {"gray": (8, 0), "gray_alpha": (8, 4), "gray16": (16, 0)}
    for name, depth_type in expect.items():
        assert _png_colour(out / f"{name}.png") == depth_type, name
    la16 = cv2.imread(str(out / "la16.png"), cv2.IMREAD_UNCHANGED)
    assert la16.dtype == np.uint16 and la16.shape == (32, 32, 4)
    assert (la16[..., 0] == la16[..., 1]).all() and (la16[..., 1] == la16[..., 2]).all()
    assert "RGBA" not in err  # no note of a colour fallback


# ---------------------------------------------------------------------------------------------- 2. frames
def _gif(path: Path, frames: list[np.ndarray], durations: list[int], loop: int) -> None:
    ims = [Image.fromarray(f).convert("P", palette=Image.ADAPTIVE) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=durations, loop=loop, disposal=1)


def _frames_of(path: Path) -> list[tuple[tuple[int, int], int]]:
    """(size, duration) of every frame."""
    out = []
    with Image.open(path) as im:
        for k in range(im.n_frames):
            im.seek(k)
            im.load()  # WebP: the duration is known once the frame is decoded
            out.append((im.size, im.info.get("duration")))
    return out


def test_every_frame_of_pages_and_animations_is_upscaled(tmp_path, capsys, common):
    src = tmp_path / "in"
    src.mkdir()
    pages = [Image.fromarray(photo(h, w, k)) for k, (h, w) in enumerate([(16, 20), (20, 16), (24, 24)])]
    pages[0].save(src / "scan.tif", save_all=True, append_images=pages[1:])
    _gif(src / "anim.gif", [photo(16, 20, k) for k in range(3)], [100, 200, 300], loop=0)
    save(src / "still.png", photo(16, 20, 5))
    before = tree_state(src)
    out = tmp_path / "out"

    rc, stdout, err = run(capsys, src, out, *common)

    assert rc == 0, err
    assert "3 inputs: 3 done" in stdout and tree_state(src) == before
    assert sorted(images_under(out)) == ["anim.png", "scan.tif", "still.png"]
    tif = _frames_of(out / "scan.tif")
    assert [s for s, _ in tif] == [(40, 32), (32, 40), (48, 48)]  # every page, each at its own size
    with Image.open(out / "anim.png") as apng:
        assert apng.format == "PNG" and getattr(apng, "is_animated", False) and apng.info["loop"] == 0
    assert _frames_of(out / "anim.png") == [((40, 32), d) for d in (100, 200, 300)]
    assert not (out / ".ccsr-frames").exists()  # the frame files are gone once put together
    lines = {ln["output"]: ln for ln in manifest_lines(out)}
    assert sorted(lines) == ["anim.png", "scan.tif", "still.png"] and lines["anim.png"]["frames"] == 3
    assert json.loads((out / "run.json").read_text())["counts"]["outputs_written"] == 3

    rc, stdout, _ = run(capsys, src, out, *common, "--format", "webp", "--overwrite")
    assert rc == 0
    with Image.open(out / "anim.webp") as webp:
        assert webp.n_frames == 3 and webp.info["loop"] == 0
    assert [d for _, d in _frames_of(out / "anim.webp")] == [100, 200, 300]
    assert len(_frames_of(out / "scan.tif")) == 3

    first = tmp_path / "first"  # --frames first: today's behaviour, on purpose
    rc, stdout, _ = run(capsys, src, first, *common, "--frames", "first")
    assert rc == 0 and sorted(images_under(first)) == ["anim.png", "scan.png", "still.png"]
    with Image.open(first / "anim.png") as im:
        assert not getattr(im, "is_animated", False) and im.size == (40, 32)
    # the first frame of --frames all is the same image as --frames first: one seed for every frame
    with Image.open(out / "anim.png") as im:
        np.testing.assert_array_equal(
            np.asarray(im.convert("RGB")), np.asarray(Image.open(first / "anim.png"))
        )


def test_killed_mid_animation_resumes_at_the_next_frame(tmp_path, capsys, common):
    src = tmp_path / "in"
    src.mkdir()
    _gif(src / "anim.gif", [photo(*SLOW_INPUT, k) for k in range(4)], [50, 60, 70, 80], loop=2)
    out, ref, log = tmp_path / "out", tmp_path / "ref", tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [_console_script(), "upscale", str(src), str(out), *map(str, common), "--quiet", "--workers", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_for_outputs(proc, out / "manifest.jsonl", 1)
    end = (
        time.monotonic() + 60
    )  # a frame's manifest line is written just before the file is renamed into place
    while not list((out / ".ccsr-frames").glob("anim.png.frame*.png")) and time.monotonic() < end:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    parts = sorted((out / ".ccsr-frames").glob("anim.png.frame*.png"))
    assert 1 <= len(parts) < 4 and not (out / "anim.png").exists(), "the run finished before the kill"

    rc, _, err = run(capsys, src, out, *common, "--log-jsonl", log)

    assert rc == 0, err
    redone = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "image"]
    assert len(redone) == 4 - len(parts)  # the frames already on disk were not computed again
    assert run(capsys, src, ref, *common)[0] == 0
    assert (out / "anim.png").read_bytes() == (ref / "anim.png").read_bytes()
    with Image.open(out / "anim.png") as im:
        assert im.n_frames == 4 and im.info["loop"] == 2
    assert not (out / ".ccsr-frames").exists()
