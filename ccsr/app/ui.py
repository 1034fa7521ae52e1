"""The Gradio page of ``ccsr app``: three tabs over :class:`ccsr.app.engine.Engine`, nothing else.

Every handler turns the controls into :class:`~ccsr.app.engine.Settings`, calls the engine, and maps
a :class:`~ccsr.app.engine.UserError` to a message in the page (never a stack trace; the server
stays up). Work that uses the model goes through one queue slot (``concurrency_id="model"``).
"""

from __future__ import annotations

import functools
import html
import importlib.util
from pathlib import Path

import gradio as gr
from PIL import Image

from ccsr.app.engine import Engine, Settings, UserError

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
COLOR_FIX_CHOICES = ["model default", "adain", "wavelet", "none"]
STEP_CHOICES = [1, 2, 3, 4, 6, 8]


def _examples() -> dict[str, str]:
    return {p.name: str(p) for p in sorted(EXAMPLES_DIR.glob("*.png"))}


def _settings(steps, scale, seed, samples, color_fix, guidance, tiling, process_size) -> Settings:
    return Settings(
        steps=int(steps),
        scale=int(scale),
        seed=int(seed or 0),
        samples=int(samples),
        color_fix=None if color_fix == "model default" else color_fix,
        guidance=None if guidance in (None, "") else float(guidance),
        tiling=tiling,
        process_size=int(process_size),
    )


def _thumb(path: Path) -> Image.Image:
    """A small copy for the gallery, decoded once per file version (the gallery is redrawn every poll)."""
    return _thumb_of(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _thumb_of(path: str, mtime_ns: int, side: int = 256) -> Image.Image:
    with Image.open(path) as f:
        im = f.convert("RGB")
        im.thumbnail((side, side))
        return im


def _error(n: int | None, msg: str) -> str:
    return f"**{f'Run {n}: error' if n else 'Error'}.** {msg}"


def build(engine: Engine, process_size: int = 512) -> gr.Blocks:
    examples = _examples()
    with gr.Blocks(title="ccsr: content-consistent super-resolution") as demo:
        gr.Markdown(
            f"## ccsr: content-consistent diffusion super-resolution\nModel: `{engine.model}`. "
            "Upscale an image, compare it with bicubic, and see where the model is unsure across seeds."
        )
        with gr.Tab("Single image", id="single"):
            controls = _single_tab(engine, examples, process_size)
        with gr.Tab("Folder", id="folder"):
            _folder_tab(engine, controls)
        if importlib.util.find_spec("pyiqa") is not None:
            with gr.Tab("Evaluate", id="evaluate"):
                _evaluate_tab(engine)
    return demo


def _single_tab(engine: Engine, examples: dict[str, str], process_size: int) -> list:
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(label="image to upscale", type="filepath", elem_id="upload")
            example = gr.Dropdown(
                choices=[""] + list(examples), value="", label="or a shipped example", elem_id="example"
            )
            steps = gr.Dropdown(choices=STEP_CHOICES, value=1, label="steps (denoiser evaluations)")
            scale = gr.Slider(1, 8, value=4, step=1, label="scale")
            seed = gr.Number(value=0, precision=0, label="seed")
            samples = gr.Slider(
                1,
                10,
                value=1,
                step=1,
                label="samples K (seeds seed .. seed+K-1; K > 1: uncertainty map, consensus)",
                elem_id="samples",
            )
            color_fix = gr.Radio(COLOR_FIX_CHOICES, value="model default", label="colour fix")
            with gr.Accordion("Advanced", open=False):
                guidance = gr.Number(value=None, label="guidance (empty: 1.0 for 1 step, 4.5 for more)")
                tiling = gr.Radio(["auto", "on", "off"], value="auto", label="tiling")
                psize = gr.Number(value=process_size, precision=0, label="process size (min. short side)")
            run = gr.Button("Upscale", variant="primary", elem_id="upscale")
        with gr.Column(scale=2):
            status = gr.Markdown("", elem_id="single-status")
            slider = gr.ImageSlider(
                label="bicubic | ccsr", type="filepath", format="png", elem_id="before-after"
            )
            download = gr.File(label="download (PNG, settings in its metadata)", elem_id="download")
            strip = gr.Gallery(
                label="samples (seeds)", columns=5, height=220, format="png", elem_id="seed-strip"
            )
            heat = gr.Image(
                label="uncertainty: per-pixel std over the samples",
                type="filepath",
                format="png",
                elem_id="uncertainty",
            )
            runs = gr.State(0)  # this page's run counter, so each message is told apart from the last
    controls = [steps, scale, seed, samples, color_fix, guidance, tiling, psize]

    def on_upscale(n, up, ex, *values, progress=gr.Progress()):
        n += 1
        path = up or examples.get(ex or "")
        try:
            engine.check_upload(path)
            settings = _settings(*values)
            progress(0.1, desc=f"upscaling {settings.samples} sample(s)")
            r = engine.upscale_one(path, settings)
        except (UserError, ValueError) as e:  # ValueError: a setting the runner refuses
            return n, _error(n, str(e)), None, None, [], None
        bicubic = r.result.parent.parent / "bicubic.png"
        r.bicubic.save(bicubic)
        gallery = [
            (str(p), f"seed {s}" + (" (consensus)" if i == r.consensus else ""))
            for i, (p, s) in enumerate(zip(r.samples, r.seeds))
        ]
        w, h = r.bicubic.size
        text = f"**Run {n}: done.** {w}x{h} pixels, seed {r.seeds[r.consensus or 0]}."
        if r.consensus is not None:
            text += (
                f" Consensus of {len(r.seeds)} seeds: seed {r.seeds[r.consensus]} (least mean L1 distance on luma "
                f"to the others). Mean per-pixel std: {r.std_mean:.4f}."
            )
        return (
            n,
            text,
            (str(bicubic), str(r.result)),
            str(r.download),
            gallery,
            (str(r.heatmap) if r.heatmap else None),
        )

    run.click(
        on_upscale,
        [runs, upload, example, *controls],
        [runs, status, slider, download, strip, heat],
        concurrency_id="model",
        concurrency_limit=1,
    )
    return controls


def _folder_tab(engine: Engine, controls: list) -> None:
    gr.Markdown(
        "Upscale a folder on the server with `ccsr upscale` (sub-folders included): re-running resumes, "
        "outputs are written atomically, failures are listed. Uses the settings of the Single image tab."
    )
    with gr.Row():
        src = gr.Textbox(label="input folder (on the server)", elem_id="folder-input")
        dst = gr.Textbox(label="output folder (on the server)", elem_id="folder-output")
    with gr.Row():
        run = gr.Button("Upscale folder", variant="primary", elem_id="folder-run")
        stop = gr.Button("Stop", elem_id="folder-stop")
    status = gr.Markdown("", elem_id="folder-status")
    gallery = gr.Gallery(label="finished outputs", columns=6, height=400, elem_id="folder-gallery")

    def on_run(a, b, *values, progress=gr.Progress()):
        try:
            settings = _settings(*values)
            for p in engine.upscale_folder(a, b, settings):
                if p.total:
                    progress((p.done, p.total), desc="images", unit="images")
                text = p.message if p.finished else f"{p.done} / {p.total or '?'} images"
                yield text, [(_thumb(o), o.name) for o in p.outputs]
        except (UserError, ValueError) as e:
            yield _error(None, str(e)), []

    run.click(on_run, [src, dst, *controls], [status, gallery], concurrency_id="model", concurrency_limit=1)
    stop.click(
        lambda: (
            "Stopping: finishing the outputs already computed..."
            if engine.stop()
            else "No folder job is running."
        ),
        None,
        status,
        concurrency_limit=None,
    )


def _evaluate_tab(engine: Engine) -> None:
    gr.Markdown("The `ccsr evaluate` report of a run folder (and its ground truth, for PSNR / SSIM / LPIPS).")
    with gr.Row():
        run_dir = gr.Textbox(label="run folder (on the server)", elem_id="eval-run")
        gt_dir = gr.Textbox(label="ground-truth folder (optional)", elem_id="eval-gt")
    go = gr.Button("Evaluate", variant="primary", elem_id="eval-go")
    status = gr.Markdown("", elem_id="eval-status")
    report = gr.HTML(elem_id="eval-report")

    def on_eval(a, b, progress=gr.Progress()):
        try:
            progress(0.1, desc="scoring")
            page = engine.evaluate(a, b or None)
        except UserError as e:
            return _error(None, str(e)), ""
        frame = f'<iframe srcdoc="{html.escape(page)}" style="width:100%;height:900px;border:0"></iframe>'
        return "Report:", frame

    go.click(on_eval, [run_dir, gt_dir], [status, report], concurrency_id="model", concurrency_limit=1)
