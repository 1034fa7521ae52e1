"""Run-folder readers: our layout, the reference's sample00/sample0 layouts, pairing, and every error case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccsr.metrics.readers import REPORT_ASSETS, RunFolderError, find_sweep, open_run, read_image


def _img(path: Path, size=(24, 16), value: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = (np.arange(h * w * 3).reshape(h, w, 3) * 7 + value) % 256
    arr = arr.astype(np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _samples(root: Path, names=("a.png", "b.png"), k: int = 3, fmt: str = "sample{:02d}") -> Path:
    for s in range(k):
        for n in names:
            _img(root / fmt.format(s) / n, value=s)
    return root


def test_our_layout_with_k_samples(tmp_path):
    run = _samples(tmp_path / "run", names=("a.png", "sub/b.png"))
    (run / "run.json").write_text("{}")
    r = open_run(run)
    assert r.layout == "sample00" and r.num_samples == 3 and r.names == ("a.png", "sub/b.png")
    assert r.sizes == ((24, 16), (24, 16))
    x = r.load_samples(1)
    assert x.shape == (3, 3, 16, 24) and x.dtype.is_floating_point is False
    expected = np.asarray(Image.open(run / "sample02" / "sub/b.png"))
    assert np.array_equal(x[2].permute(1, 2, 0).numpy(), expected)


def test_reference_v1_layout_sample0_to_sample9(tmp_path):
    r = open_run(_samples(tmp_path / "v1", k=10, fmt="sample{}"))
    assert r.layout == "sample0" and r.num_samples == 10
    assert [d.name for d in r.sample_dirs] == [f"sample{k}" for k in range(10)]


def test_reference_v2_layout_sorted_numerically_beyond_ten(tmp_path):
    r = open_run(_samples(tmp_path / "v2", k=12))
    assert [d.name for d in r.sample_dirs][-3:] == ["sample09", "sample10", "sample11"]


def test_single_layout_ignores_report_assets_and_reads_failures(tmp_path):
    run = tmp_path / "run"
    _img(run / "x.png")
    _img(run / "nested" / "y.png")
    _img(run / REPORT_ASSETS / "run" / "01_x_std.png")  # a previous report's heat map
    (run / "manifest.jsonl").write_text(
        json.dumps({"input": "x.jpg", "output": "x.png", "sample": 0})
        + "\n"
        + json.dumps({"output": "nested/y.png"})
        + "\n"
    )
    (run / "failures.txt").write_text("in/broken.jpg\tcannot identify image file\n")
    r = open_run(run)
    assert r.layout == "single" and r.num_samples == 1 and r.names == ("nested/y.png", "x.png")
    assert r.failures == ("in/broken.jpg\tcannot identify image file",)


def test_manifest_output_missing_on_disk_is_an_error(tmp_path):
    run = _samples(tmp_path / "run", k=2)
    ok = json.dumps({"output": "sample01/a.png", "sample": 1}) + "\n"
    (run / "manifest.jsonl").write_text(ok + '{"output": "sample01/b.pn')  # torn last line: ignored
    assert open_run(run).num_samples == 2
    (run / "manifest.jsonl").write_text(ok + json.dumps({"output": "sample01/c.png", "sample": 1}) + "\n")
    with pytest.raises(RunFolderError, match=r"line 2 lists output 'sample01/c.png'.*did not finish"):
        open_run(run)


def test_unequal_sample_counts_name_the_missing_files(tmp_path):
    run = _samples(tmp_path / "run", names=("a.png", "b.png", "c.png"))
    (run / "sample01" / "b.png").unlink()
    with pytest.raises(RunFolderError, match=r"sample01/ lacks b\.png") as e:
        open_run(run)
    assert "sample00" not in str(e.value).split("names in all")[1]


def test_size_mismatch_across_samples_names_both_files(tmp_path):
    run = _samples(tmp_path / "run", k=2)
    _img(run / "sample01" / "a.png", size=(20, 16))
    with pytest.raises(RunFolderError, match=r"sample00/a\.png is 24x16.*sample01/a\.png is 20x16"):
        open_run(run)


def test_gap_in_sample_folders_and_mixed_styles_are_errors(tmp_path):
    run = _samples(tmp_path / "gap", k=3)
    (run / "sample01").rename(run / "sample03")
    with pytest.raises(RunFolderError, match=r"missing sample\(s\) 1"):
        open_run(run)
    mixed = tmp_path / "mixed"
    _img(mixed / "sample00" / "a.png")
    _img(mixed / "sample1" / "a.png")
    with pytest.raises(RunFolderError, match="mixes sample00-style and sample0-style"):
        open_run(mixed)


def test_loose_images_beside_sample_folders_are_an_error(tmp_path):
    run = _samples(tmp_path / "run", k=2)
    _img(run / "stray.png")
    with pytest.raises(RunFolderError, match=r"loose images outside them: stray\.png"):
        open_run(run)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        open_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="holds no output images"):
        open_run(tmp_path / "empty")


def test_sweep_folders_are_found_and_refused_as_a_single_run(tmp_path):
    for s in (4, 1, 2):
        _samples(tmp_path / "sweep" / f"steps{s}", k=2)
    assert [(s, d.name) for s, d in find_sweep(tmp_path / "sweep")] == [
        (1, "steps1"),
        (2, "steps2"),
        (4, "steps4"),
    ]
    assert find_sweep(tmp_path / "sweep" / "steps1") == []
    with pytest.raises(RunFolderError, match="step sweep"):
        open_run(tmp_path / "sweep")


def test_ground_truth_pairs_by_name_ignoring_extension(tmp_path):
    run = _samples(tmp_path / "run", names=("a.png", "b.png"))
    _img(tmp_path / "gt" / "a.jpg")
    _img(tmp_path / "gt" / "b.png")
    r = open_run(run, tmp_path / "gt")
    assert [p.name for p in r.gt_files] == ["a.jpg", "b.png"]
    assert r.load_gt(1).shape == (3, 16, 24)


def test_ground_truth_with_other_names_fails_by_name_and_pairs_by_order(tmp_path):
    run = _samples(tmp_path / "run", names=("Canon_001_LR4.png", "Canon_002_LR4.png"))
    for n in ("Canon_001_HR.png", "Canon_002_HR.png"):
        _img(tmp_path / "gt" / n)
    with pytest.raises(
        RunFolderError, match=r"Outputs with no ground truth: Canon_001_LR4\.png.*--pair-by order"
    ):
        open_run(run, tmp_path / "gt")
    r = open_run(run, tmp_path / "gt", pair_by="order")
    assert [p.name for p in r.gt_files] == ["Canon_001_HR.png", "Canon_002_HR.png"]
    _img(tmp_path / "gt" / "Canon_003_HR.png")
    with pytest.raises(
        RunFolderError, match=r"as many ground-truth images as outputs: .*gt has 3, the run has 2"
    ):
        open_run(run, tmp_path / "gt", pair_by="order")


def test_ground_truth_errors_name_the_files(tmp_path):
    run = _samples(tmp_path / "run", names=("a.png", "b.png"), k=2)
    _img(tmp_path / "gt" / "a.png")
    _img(tmp_path / "gt" / "b.png", size=(96, 64))
    with pytest.raises(
        RunFolderError, match=r"output .*sample00/b\.png is 24x16 but ground truth .*gt/b\.png is 96x64"
    ):
        open_run(run, tmp_path / "gt")
    _img(tmp_path / "gt" / "b.png")
    _img(tmp_path / "gt" / "c.png")
    with pytest.raises(RunFolderError, match=r"Ground truth with no output: c\.png"):
        open_run(run, tmp_path / "gt")
    with pytest.raises(RunFolderError, match="ground-truth folder .* does not exist"):
        open_run(run, tmp_path / "no_gt")


def test_sixteen_bit_images_are_refused_not_truncated(tmp_path):
    p = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(p)
    with pytest.raises(RunFolderError, match="16-bit"):
        read_image(p)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((8, 8), 77, dtype=np.uint8)).save(grey)
    assert read_image(grey).shape == (3, 8, 8) and int(read_image(grey).min()) == 77
