"""ccsr.app.engine without a browser (runs where Chromium is missing): the app's work is `ccsr upscale`'s."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ccsr.app.engine import Engine, Settings, UserError
from ccsr.cli import main as ccsr_main
from ccsr.consistency import consensus_pick


def photo(h: int, w: int, k: int = 0) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(
        data.astronaut()[40 + 29 * k : 40 + 29 * k + h, 120 + 31 * k : 120 + 31 * k + w]
    )


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    return Engine(str(tiny_model_dir), tmp_path_factory.mktemp("work"), device="cpu", max_pixels=20000)


FAST = Settings(scale=2, process_size=32, seed=3)


def test_one_image_is_the_cli_output_with_settings_in_the_png(engine, tiny_model_dir, tmp_path):
    src = tmp_path / "a photo.png"
    Image.fromarray(photo(16, 20)).save(src)
    r = engine.upscale_one(src, FAST)
    assert ccsr_main(
        ["upscale", str(src), str(tmp_path / "cli"), "--model", str(tiny_model_dir), "--scale", "2"]
        + ["--process-size", "32", "--seed", "3", "--quiet"]
    ) in (0,)
    cli = np.asarray(Image.open(tmp_path / "cli" / "a photo.png"))
    got = Image.open(r.download)
    assert np.array_equal(np.asarray(got), cli) and got.size == (40, 32) == r.bicubic.size
    meta = json.loads(got.text["ccsr"])
    assert meta["seed"] == 3 and meta["settings"]["scale"] == 2 and meta["input"] == "a_photo.png"
    assert r.samples == [] and r.heatmap is None and r.consensus is None


def test_k_samples_give_the_strip_the_heat_map_and_the_consensus(engine, tmp_path):
    src = tmp_path / "b.png"
    Image.fromarray(photo(16, 20, 1)).save(src)
    r = engine.upscale_one(src, Settings(scale=2, process_size=32, seed=3, samples=3))
    assert r.seeds == [3, 4, 5] and len(r.samples) == 3 and all(p.is_file() for p in r.samples)
    assert r.heatmap.name == "b_std.png" and Image.open(r.heatmap).size == (40 + 66, 96)
    pick = consensus_pick([Image.open(p) for p in r.samples])
    assert r.consensus == pick.index and r.result == r.samples[pick.index]
    assert json.loads(Image.open(r.download).text["ccsr"])["consensus_of_seeds"] == [3, 4, 5]
    assert r.std_mean > 0


def test_bad_uploads_are_user_errors(engine, tmp_path):
    (tmp_path / "t.png").write_text("text")
    Image.fromarray(photo(1, 1)).save(tmp_path / "dot.png")
    Image.fromarray(photo(150, 150)).save(tmp_path / "big.png")
    for name, why in [("t.png", "not an image"), ("dot.png", "too small"), ("big.png", "too large")]:
        with pytest.raises(UserError, match=why):
            engine.upscale_one(tmp_path / name, FAST)
    with pytest.raises(UserError, match="Upload an image"):
        engine.check_upload(None)


def test_folder_job_reports_progress_failures_and_resumes(engine, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for k in range(2):
        Image.fromarray(photo(16, 20, k)).save(src / f"img{k}.png")
    (src / "empty.png").write_bytes(b"")
    assert engine.stop() is False  # nothing runs
    steps = list(engine.upscale_folder(str(src), str(out), FAST))
    last = steps[-1]
    assert last.finished and "1 failure" in last.message and "empty file" in last.message
    assert sorted(p.name for p in last.outputs) == ["img0.png", "img1.png"]
    again = list(engine.upscale_folder(str(src), str(out), FAST))[-1]
    assert "outputs skipped: 2" in again.message
    with pytest.raises(UserError, match="does not exist"):
        list(engine.upscale_folder(str(tmp_path / "nope"), str(out), FAST))


def test_evaluate_inlines_the_report(engine, tmp_path):
    pytest.importorskip("pyiqa")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(photo(16, 20)).save(src / "img0.png")
    list(engine.upscale_folder(str(src), str(out), Settings(scale=2, process_size=32, samples=2)))
    page = engine.evaluate(str(out), None)
    assert "L-STD" in page and "data:image/png;base64," in page  # heat maps inlined
    assert 'src="report_files/' not in page
    with pytest.raises(UserError, match="does not exist"):
        engine.evaluate(str(tmp_path / "nope"), None)
