"""`ccsr app` in a real browser: the console script serves the page, Playwright drives Chromium.

Offline: Chromium is the system package (Debian's ``chromium``, ``/usr/bin/chromium``, or
``$CCSR_CHROMIUM``), never Playwright's download. Skipped, with the reason, when Playwright, Chromium
or Gradio is missing. ``CCSR_APP_SCREENSHOTS=DIR`` also saves the tab screenshots there (docs/images);
``CCSR_APP_TEST_MODEL`` serves another model than the tests' tiny random one (e.g. ``tiny``).

    pytest -m browser -q
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CCSR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROCESS_SIZE = 32  # fast: inputs are upscaled x4 without growing the canvas further


def _missing() -> str | None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        return 'Gradio is not installed (pip install -e ".[app]")'
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright; no `playwright install` needed)"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CCSR_CHROMIUM)"
    return None


if _missing():
    pytest.skip(f"browser tests skipped: {_missing()}", allow_module_level=True)


def photo(h: int, w: int) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[30 : 30 + h, 150 : 150 + w])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> str:
    return os.environ.get("CCSR_APP_TEST_MODEL") or str(tiny_model_dir)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """``ccsr app`` as a subprocess of the console script on a free localhost port."""
    work = tmp_path_factory.mktemp("app-work")
    port = free_port()
    exe = Path(sys.executable).parent / "ccsr"
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(
        [str(exe), "app", "--model", model, "--port", str(port), "--process-size", str(PROCESS_SIZE)]
        + ["--max-pixels", "20000", "--work-dir", str(work / "requests")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "no_proxy": "*"},
    )
    url = f"http://127.0.0.1:{port}/"
    end = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, (work / "server.log").read_text()
        assert time.monotonic() < end, (
            "ccsr app did not answer within 300 s:\n" + (work / "server.log").read_text()
        )
        time.sleep(0.5)
    yield url, proc, work
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(240_000)
    pg.goto(server[0])
    pg.wait_for_selector("#upscale")
    yield pg
    ctx.close()


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"app-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    docs = os.environ.get("CCSR_APP_SCREENSHOTS")
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        im = Image.open(path).convert("RGB")
        im.thumbnail((1100, 1400))
        im.quantize(128).save(Path(docs) / path.name, optimize=True)
    return path


def upload(page, path: Path) -> None:
    clear = page.locator('#upload button[aria-label="Clear"]')
    if clear.count():
        clear.first.click()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.wait_for_function(
        "name => document.querySelector('#upload').innerText.includes(name)", arg=path.name
    )  # the page's default timeout (240 s): a loaded CI machine can take well over 30 s here


def click_upscale(page) -> str:
    """Click Upscale and wait for this run's message (``Run N: done.`` or ``Run N: error.``)."""
    m = re.search(r"Run (\d+):", page.locator("#single-status").inner_text())
    n = int(m.group(1)) + 1 if m else 1
    page.click("#upscale")
    page.wait_for_function(
        "n => document.querySelector('#single-status').innerText.includes(`Run ${n}:`)", arg=n
    )
    return page.locator("#single-status").inner_text()


def set_samples(page, k: int) -> None:
    box = page.locator("#samples input[type=number]")
    box.fill(str(k))
    box.press("Tab")


def test_single_image_matches_ccsr_upscale_and_shows_consistency(page, server, model, tmp_path):
    src = tmp_path / "in" / "astronaut.png"
    src.parent.mkdir()
    Image.fromarray(photo(40, 48)).save(src)
    upload(page, src)
    text = click_upscale(page)
    assert "done." in text and "192x160 pixels" in text, text
    assert page.locator("#before-after img").count() == 2  # the slider holds bicubic and the result
    with page.expect_download() as dl:
        page.locator("#download a").first.click()
    got = tmp_path / "download.png"
    dl.value.save_as(got)
    im = Image.open(got)
    assert im.size == (48 * 4, 40 * 4)  # scale x input
    meta = json.loads(im.text["ccsr"])
    assert meta["seed"] == 0 and meta["settings"]["scale"] == 4 and meta["settings"]["steps"] == 1
    # the same pixels as `ccsr upscale` on the same image, seed and settings
    out = tmp_path / "cli"
    exe = Path(sys.executable).parent / "ccsr"
    r = subprocess.run(
        [str(exe), "upscale", str(src), str(out), "--model", model, "--process-size", str(PROCESS_SIZE)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(im), np.asarray(Image.open(out / "astronaut.png")))

    set_samples(page, 3)
    text = click_upscale(page)
    assert "done." in text and "Consensus of 3 seeds" in text, text
    assert page.locator("#seed-strip img").count() >= 3
    assert page.locator("#seed-strip").inner_text().count("seed ") >= 3
    assert page.locator("#uncertainty img").count() == 1  # the heat map
    assert page.locator("#before-after img").count() == 2
    shot(page, tmp_path, "single")


def test_bad_uploads_get_a_message_and_the_server_stays_up(page, server, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.png").write_text("this is not an image\n")
    Image.fromarray(photo(1, 1)).save(bad / "dot.png")
    Image.fromarray(photo(150, 150)).save(bad / "big.png")  # 22500 pixels > --max-pixels 20000
    for name, why in [("notes.png", "not an image"), ("dot.png", "too small"), ("big.png", "too large")]:
        upload(page, bad / name)
        text = click_upscale(page)
        assert "error." in text and name in text and why in text, text
        assert "Traceback" not in page.content()
    assert server[1].poll() is None  # the server is still running
    good = tmp_path / "good.png"
    Image.fromarray(photo(20, 24)).save(good)
    upload(page, good)
    text = click_upscale(page)
    assert "done." in text and "96x80 pixels" in text, text


def test_folder_and_evaluate_tabs(page, server, tmp_path):
    src, out, gt = tmp_path / "photos", tmp_path / "upscaled", tmp_path / "gt"
    for d in (src, gt):
        d.mkdir()
    for k in range(2):
        hr = Image.fromarray(photo(64, 80)[:, ::-1] if k else photo(64, 80))
        hr.save(gt / f"img{k}.png")
        hr.resize((20, 16), Image.Resampling.BICUBIC).save(src / f"img{k}.png")
    (src / "broken.png").write_bytes(b"")
    page.get_by_role("tab", name="Folder").click()
    page.locator("#folder-input textarea, #folder-input input").first.fill(str(src))
    page.locator("#folder-output textarea, #folder-output input").first.fill(str(out))
    page.click("#folder-run")
    page.wait_for_function("document.querySelector('#folder-status').innerText.includes('Finished')")
    status = page.locator("#folder-status").inner_text()
    assert "1 failure" in status and "broken.png" in status and "empty file" in status, status
    page.wait_for_function("document.querySelectorAll('#folder-gallery img').length >= 2")
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img1.png"]
    assert not [p for p in out.rglob("*") if ".ccsr-tmp-" in p.name]
    assert Image.open(out / "img0.png").size == (80, 64)
    shot(page, tmp_path, "folder")

    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-run textarea, #eval-run input").first.fill(str(out))
    page.locator("#eval-gt textarea, #eval-gt input").first.fill(str(gt))
    page.click("#eval-go")
    page.wait_for_function("/Report|Error/.test(document.querySelector('#eval-status').innerText)")
    assert "Report" in page.locator("#eval-status").inner_text(), page.locator("#eval-status").inner_text()
    frame = page.frame_locator("#eval-report iframe")
    assert "PSNR" in frame.locator("body").inner_text() or "psnr" in frame.locator("body").inner_text()
    shot(page, tmp_path, "evaluate")


def test_stopping_a_folder_job_leaves_no_half_written_file(page, server, tmp_path):
    src, out = tmp_path / "many", tmp_path / "out"
    src.mkdir()
    for k in range(6):
        Image.fromarray(photo(40, 48)[:, ::-1] if k % 2 else photo(40, 48)).save(src / f"img{k:02d}.png")
    page.get_by_role("tab", name="Folder").click()
    page.locator("#folder-input textarea, #folder-input input").first.fill(str(src))
    page.locator("#folder-output textarea, #folder-output input").first.fill(str(out))
    page.click("#folder-run")
    page.wait_for_function(r"/\d+ \/ 6 images/.test(document.querySelector('#folder-status').innerText)")
    page.click("#folder-stop")  # while the job is on its first images
    page.wait_for_function("/Stopped|Finished/.test(document.querySelector('#folder-status').innerText)")
    status = page.locator("#folder-status").inner_text()
    assert "Stopped" in status, f"the job ended before it was stopped: {status}"
    done = sorted(p.name for p in out.glob("*.png"))
    assert len(done) < 6, status
    assert not [p for p in out.rglob("*") if ".ccsr-tmp-" in p.name]
    for name in done:  # every file with an output name is a complete image
        Image.open(out / name).load()
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    # running again resumes: the rest is done, nothing redone
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    page.click("#folder-run")
    page.wait_for_function("document.querySelector('#folder-status').innerText.includes('Finished')")
    assert len(list(out.glob("*.png"))) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
