"""pyiqa metrics on real photos, unavailable weights, and the report built from real tiny-model runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccsr.cli import main as cli_main
from ccsr.metrics.readers import RunFolderError
from ccsr.metrics.report import write_report

UPSCALE = 2


def _photos() -> dict[str, Image.Image]:
    """Two real 96x64 photograph crops (scikit-image's astronaut and chelsea), the ground truth."""
    from skimage import data

    return {
        "astronaut.png": Image.fromarray(data.astronaut()[100:164, 180:276]),
        "chelsea.png": Image.fromarray(data.chelsea()[60:124, 150:246]),
    }


def _upscale_run(
    pipe, gt: dict[str, Image.Image], out: Path, samples: int, steps: int, seed: int = 0
) -> Path:
    """Write a run folder in the shared layout (sample k uses seed + k) from a real tiny-model pipeline."""
    lrs = [
        im.resize((im.width // UPSCALE, im.height // UPSCALE), Image.Resampling.BICUBIC) for im in gt.values()
    ]
    records = []
    for k in range(samples):
        gens = [torch.Generator().manual_seed(seed + k) for _ in lrs]
        images = pipe(lrs, steps, upscale=UPSCALE, process_size=64, generator=gens).images
        for name, img in zip(gt, images):
            rel = f"sample{k:02d}/{name}" if samples > 1 else name
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(out / rel)
            records.append(
                {"input": name, "output": rel, "sample": k, "seed": seed + k, "settings": f"steps{steps}"}
            )
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "run.json").write_text(json.dumps({"steps": steps, "samples": samples, "seed": seed}))
    return out


@pytest.fixture(scope="module")
def gt_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gt")
    for name, im in _photos().items():
        im.save(d / name)
    return d


@pytest.fixture(scope="module")
def tiny_run(tiny_pipe, tmp_path_factory) -> Path:
    return _upscale_run(tiny_pipe, _photos(), tmp_path_factory.mktemp("run"), samples=3, steps=1)


def _y(a: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of 8-bit RGB, in [16, 235] (the paper's 'Y of YCbCr')."""
    a = a.astype(np.float64) / 255.0
    return 16.0 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]


def test_psnr_and_ssim_on_y_channel_match_an_independent_computation():
    from skimage.metrics import structural_similarity

    from ccsr.metrics.iqa import load_metric

    hr = np.array(_photos()["astronaut.png"])
    sr = np.clip(hr + np.random.default_rng(0).normal(0, 10, hr.shape), 0, 255).astype(np.uint8)
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    psnr = load_metric("psnr").score(t(sr), t(hr)).item()
    mse = np.mean(((_y(sr) - _y(hr)) / 255.0) ** 2)
    assert psnr == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
    ssim = load_metric("ssim").score(t(sr), t(hr)).item()
    # pyiqa rounds Y to integers as MATLAB does; Gaussian window sigma 1.5, population statistics
    ref = structural_similarity(
        np.round(_y(hr)),
        np.round(_y(sr)),
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim == pytest.approx(ref, abs=1e-4)
    same = load_metric("ssim").score(t(hr).repeat(2, 1, 1, 1), t(hr))
    assert same.shape == (2,) and torch.allclose(same, torch.ones(2, dtype=torch.float64))


def test_metric_metadata_comes_from_pyiqa_without_weights():
    from ccsr.commands.evaluate import PAPER_SET
    from ccsr.metrics.iqa import PAPER_METRICS, metric_info

    assert PAPER_SET == tuple(PAPER_METRICS)  # `--metrics paper` is the pinned table

    assert (metric_info("psnr").arrow, metric_info("psnr").mode) == ("↑", "FR")
    assert (metric_info("lpips").arrow, metric_info("lpips").needs_gt) == ("↓", True)
    assert (metric_info("niqe").mode, metric_info("niqe").needs_gt) == ("NR", False)
    assert metric_info("maniqa").pyiqa_name == "maniqa-pipal"
    assert metric_info("fid").level == "folder" and metric_info("fid").needs_gt
    with pytest.raises(ValueError, match="unknown metric 'psnrr'"):
        metric_info("psnrr")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tables += tag == "table"
        if tag == "img":
            self.links.append(a["src"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])


def _independent_l_std(run: Path, names, samples: int, crop: int = 4) -> float:
    per = []
    for n in names:
        stack = np.stack(
            [
                np.asarray(Image.open(run / f"sample{k:02d}" / n), dtype=np.float64) / 255
                for k in range(samples)
            ]
        )
        per.append(np.std(stack[:, crop:-crop, crop:-crop, :], axis=0).mean())
    return float(np.mean(per))


def test_report_end_to_end_from_a_tiny_model_run(tiny_run, gt_dir, tmp_path):
    out = tmp_path / "report"
    page = write_report(tiny_run, gt_dir, ("psnr", "ssim"), out_dir=out)
    assert page == out / "report.html"
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    assert parser.tables >= 2 and parser.links
    assert all((out / link).is_file() for link in parser.links), parser.links
    summary = json.loads((out / "report.json").read_text())
    run = summary["runs"][0]
    assert (run["samples"], run["images"], run["layout"]) == (3, 2, "sample00")
    # means and G-STD agree with the per-sample scores written beside them
    per = json.loads((out / "per_image.json").read_text())["runs"][0]["images"]
    psnr = np.array([im["scores"]["psnr"] for im in per])  # (images, samples)
    assert run["metrics"]["psnr"]["mean"] == pytest.approx(psnr.mean())
    assert run["metrics"]["psnr"]["g_std"] == pytest.approx(np.std(psnr, axis=1).mean())
    assert run["metrics"]["ssim"]["g_std"] > 0  # three seeds really give three different images
    # L-STD recomputed from the PNG files with numpy
    assert run["l_std"] == pytest.approx(
        _independent_l_std(tiny_run, ["astronaut.png", "chelsea.png"], 3), rel=1e-5
    )
    unstable = run["most_unstable"]
    assert [u["l_std"] for u in unstable] == sorted((u["l_std"] for u in unstable), reverse=True)
    assert Image.open(out / unstable[0]["heatmap"]).size == (96 - 8, 64 - 8)
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["image"] for r in rows] == ["astronaut.png", "chelsea.png"] and float(rows[0]["psnr_std"]) >= 0
    md = (out / "report.md").read_text()
    assert "| PSNR ↑ | SSIM ↑ | L-STD ↓ |" in md and unstable[0]["figure"] in md
    # the run folder itself is untouched: no report written into it
    assert not (tiny_run / "report.html").exists()


def test_report_into_the_run_folder_twice_and_refusing_a_foreign_folder(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    first = write_report(run)  # no ground truth: psnr/ssim listed as not computed, L-STD still measured
    summary = json.loads((run / "report.json").read_text())
    assert set(summary["not_computed"]) == {"psnr", "ssim"} and summary["runs"][0]["l_std"] > 0
    assert "needs a ground-truth folder" in first.read_text()
    assert write_report(run) == first  # its own report_files/ are replaced, and never read as outputs
    foreign = tmp_path / "elsewhere"
    (foreign / "report_files").mkdir(parents=True)
    with pytest.raises(RunFolderError, match="not written by ccsr"):
        write_report(run, out_dir=foreign)


def test_sweep_gives_one_comparison_report(tiny_pipe, tiny_run, gt_dir, tmp_path):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_run, sweep / "steps1")  # the 1-step run with 3 samples
    _upscale_run(tiny_pipe, _photos(), sweep / "steps2", samples=2, steps=2, seed=10)
    page = write_report(sweep, gt_dir, ("psnr",))
    summary = json.loads((sweep / "report.json").read_text())
    assert [(r["label"], r["steps"], r["samples"]) for r in summary["runs"]] == [
        ("steps1", 1, 3),
        ("steps2", 2, 2),
    ]
    assert 'src="report_files/metrics_vs_steps.png"' in page.read_text()
    assert (sweep / "report_files" / "metrics_vs_steps.png").is_file()
    assert [r["steps"] for r in csv.DictReader((sweep / "per_image.csv").open())] == ["1", "1", "2", "2"]
    assert [r["label"] for r in summary["runs"] if r["most_unstable"]] == ["steps1", "steps2"]


def test_commands_refuse_single_sample_stability_and_missing_ground_truth(tiny_run, tmp_path, capsys):
    single = tmp_path / "single"
    single.mkdir()
    for f in (tiny_run / "sample00").iterdir():
        (single / f.name).write_bytes(f.read_bytes())
    assert cli_main(["stability", str(single), "--quiet"]) == 2
    assert "has 1 sample(s) per image; stability needs at least 2" in capsys.readouterr().err
    out = tmp_path / "o"
    assert (
        cli_main(["evaluate", str(tiny_run), "--metrics", "psnr", "--strict", "--out", str(out), "--quiet"])
        == 2
    )
    assert "psnr needs a ground-truth folder (--gt)" in capsys.readouterr().err
    assert cli_main(["stability", str(tiny_run), "--metrics", "psnr", "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "not computed: psnr" in captured.err and "L-STD ↓" in captured.out


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No weights cached (empty TORCH_HOME) and every download refused at once (proxy on a closed port)."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    proxy = "http://127.0.0.1:9"
    env.update(
        TORCH_HOME=str(tmp_path / "torch_home"), HF_HUB_OFFLINE="1", HTTP_PROXY=proxy, HTTPS_PROXY=proxy
    )
    env.update(http_proxy=proxy, https_proxy=proxy)
    return env


def test_metric_without_weights_is_reported_unavailable_not_a_traceback(tiny_run, gt_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "ccsr",
        "evaluate",
        str(tiny_run),
        "--gt",
        str(gt_dir),
        "--metrics",
        "psnr",
        "lpips",
    ]
    cmd += ["--out", str(tmp_path / "r"), "--quiet"]
    env = _offline_env(tmp_path)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    cache = str(tmp_path / "torch_home" / "hub" / "pyiqa")
    for needle in (
        "'lpips' is unavailable",
        "LPIPS_v0.1_alex-df73285e.pth",
        "alexnet-owt-7be5be79.pth",
        cache,
        "connected machine",
    ):
        assert needle in p.stderr, needle
    summary = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "lpips" in summary["not_computed"] and summary["runs"][0]["metrics"]["psnr"]["mean"] > 0
    assert "LPIPS_v0.1_alex-df73285e.pth" in (tmp_path / "r" / "report.html").read_text()
    strict = subprocess.run([*cmd, "--strict"], env=env, capture_output=True, text=True, timeout=300)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert "LPIPS_v0.1_alex-df73285e.pth" in strict.stderr and cache in strict.stderr


def test_inference_script_is_the_same_command():
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run(
        [sys.executable, str(root / "inference" / "evaluate.py"), "--help"], capture_output=True, text=True
    )
    assert p.returncode == 0 and "--gt GT" in p.stdout and "--pair-by" in p.stdout


def test_without_pyiqa_l_std_still_works_and_metrics_say_how_to_install(
    tiny_run, gt_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # `import pyiqa` now raises ImportError
    assert cli_main(["stability", str(tiny_run), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert "L-STD ↓" in capsys.readouterr().out
    assert (
        cli_main(["evaluate", str(tiny_run), "--gt", str(gt_dir), "--out", str(tmp_path / "b"), "--quiet"])
        == 2
    )
    assert "pip install 'ccsr[metrics]'" in capsys.readouterr().err
