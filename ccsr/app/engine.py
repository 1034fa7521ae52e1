"""What ``ccsr app`` does, without any web framework: a thin layer over the upscale runner and the report.

One :class:`Engine` per server holds the pipeline, loaded once, and a lock so that one job uses it at
a time. Every upscale, of one uploaded image or of a folder, is a call of
:func:`ccsr.upscale.run.run_upscale` (the code behind ``ccsr upscale``) with that pipeline: the same
settings, seeds, atomic writes, manifest, resume and failure list, so the app's result is the
file ``ccsr upscale`` writes for the same image, seed and settings. The consistency views come from
:mod:`ccsr.consistency`; the Evaluate view is :func:`ccsr.metrics.report.write_report`'s page.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import io
import itertools
import json
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ccsr.encode import png_add_text
from ccsr.io import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from ccsr.upscale.config import UpscaleConfig
from ccsr.upscale.run import load_pipeline, run_upscale

#: The PNG text keyword under which a downloaded result carries its settings (JSON).
METADATA_KEY = "ccsr"


class UserError(Exception):
    """A problem the user can fix (bad upload, bad folder); ``str(e)`` is the message shown in the page."""


@dataclass(frozen=True)
class Settings:
    """The controls of a run, as ``ccsr upscale`` options."""

    steps: int = 1
    scale: int = 4
    seed: int = 0
    samples: int = 1
    color_fix: str | None = None  # None: the model's recommendation
    guidance: float | None = None  # None: the step preset's
    tiling: str = "auto"
    process_size: int = 512

    def config(self, engine: Engine, inputs: tuple[str, ...], output: str, **extra) -> UpscaleConfig:
        return UpscaleConfig(
            inputs=inputs,
            output=output,
            model=engine.model,
            device=engine.device,
            steps=(int(self.steps),),
            scale=int(self.scale),
            seed=int(self.seed),
            samples=int(self.samples),
            color_fix=self.color_fix,
            guidance_scale=self.guidance,
            tiling=self.tiling,
            vae_tiling=self.tiling,
            process_size=int(self.process_size),
            max_pixels=engine.max_pixels,
            workers=0,
            quiet=True,
            **extra,
        )


@dataclass
class SingleResult:
    """One uploaded image, upscaled: everything the Single image tab shows."""

    result: Path  # the output (the consensus pick when K > 1), as ccsr upscale wrote it
    bicubic: Image.Image  # the input resized to the result's size, for the before/after slider
    download: Path  # the result PNG with the settings in its metadata
    samples: list[Path] = field(default_factory=list)  # K > 1: sample k, seed seed + k
    seeds: list[int] = field(default_factory=list)
    heatmap: Path | None = None  # K > 1: <name>_std.png
    consensus: int | None = None  # index of the pick among the samples
    mean_distances: list[float] = field(default_factory=list)
    std_mean: float | None = None


@dataclass
class FolderProgress:
    """A snapshot of a folder job, yielded while it runs and at its end."""

    done: int
    total: int
    outputs: list[Path]
    message: str
    finished: bool = False


class Engine:
    def __init__(
        self,
        model: str,
        work_dir: Path,
        device: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.model = model
        self.device = device
        self.max_pixels = max_pixels
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.pipe = load_pipeline(UpscaleConfig(inputs=("-",), output="-", model=model, device=device))
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._job: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ one image
    def check_upload(self, path: str | Path | None) -> None:
        """UserError with the reason when ``path`` cannot be upscaled (the runner's own reader and limits)."""
        if not path:
            raise UserError("Upload an image (PNG, JPEG, WebP, TIFF or BMP) or pick an example first.")
        try:
            read_image(path, self.max_pixels)
        except ImageReadError as e:
            raise UserError(f"{Path(path).name} cannot be upscaled: {e}.") from None

    def upscale_one(self, path: str | Path, settings: Settings) -> SingleResult:
        """Upscale one file with ``ccsr upscale``'s runner into a fresh request folder."""
        self.check_upload(path)
        src = Path(path)
        req = self.work_dir / f"single-{next(self._ids):05d}"
        shutil.rmtree(req, ignore_errors=True)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", src.stem)[:80] or "image"
        inp = req / "in" / f"{stem}{src.suffix.lower()}"
        inp.parent.mkdir(parents=True)
        shutil.copyfile(src, inp)
        out = req / "out"
        k = int(settings.samples)
        cfg = settings.config(self, (str(inp),), str(out), uncertainty_map=k > 1)
        rc, err = self._run(cfg)
        failures = out / "failures.txt"
        if failures.is_file() and failures.read_text().strip():
            reason = failures.read_text().strip().splitlines()[0].split("\t")[-1]
            raise UserError(f"{src.name} could not be upscaled: {reason}")
        if rc != 0:
            raise UserError(f"the upscale did not run: {err.strip() or f'exit status {rc}'}")
        return self._single_result(inp, out, stem, settings)

    def _single_result(self, inp: Path, out: Path, stem: str, settings: Settings) -> SingleResult:
        from ccsr.consistency import consensus_pick

        k = int(settings.samples)
        seeds = [int(settings.seed) + i for i in range(k)]
        if k == 1:
            result, samples, pick, dist = out / f"{stem}.png", [], None, []
        else:
            samples = [out / f"sample{i:02d}" / f"{stem}.png" for i in range(k)]
            c = consensus_pick([Image.open(p) for p in samples])
            result, pick, dist = samples[c.index], c.index, list(c.mean_distances)
        with Image.open(result) as im:
            size = im.size
        bicubic = read_image(inp, self.max_pixels).model_input().resize(size, Image.Resampling.BICUBIC)
        run = json.loads((out / "run.json").read_text())
        meta = {
            "ccsr_version": run.get("ccsr_version"),
            "model": self.model,
            "input": inp.name,
            "seed": seeds[pick or 0],
            "settings": run.get("settings", {}),
        }
        if pick is not None:
            meta["consensus_of_seeds"] = seeds
        download = out.parent / f"{stem}_x{settings.scale}_seed{meta['seed']}.png"
        download.write_bytes(
            png_add_text(result.read_bytes(), {METADATA_KEY: json.dumps(meta, sort_keys=True)})
        )
        heat, std_mean = None, None
        if k > 1:
            from ccsr.upscale.derived import std_rel
            from ccsr.upscale.manifest import read_manifest

            heat = out / std_rel(f"{stem}.png")
            std_mean = read_manifest(out / "manifest.jsonl").get(heat.name, {}).get("std_mean")
        return SingleResult(result, bicubic, download, samples, seeds, heat, pick, dist, std_mean)

    # ------------------------------------------------------------------------------------------ folders
    def upscale_folder(self, input_dir: str, output_dir: str, settings: Settings) -> Iterator[FolderProgress]:
        """Run ``ccsr upscale INPUT_DIR OUTPUT_DIR`` in a thread, yielding progress until it ends."""
        if not input_dir or not Path(input_dir).expanduser().is_dir():
            raise UserError(f"input folder {input_dir!r} does not exist (give a folder on the server)")
        if not output_dir:
            raise UserError("give an output folder (it is created if needed)")
        src, dst = Path(input_dir).expanduser(), Path(output_dir).expanduser()
        events = self.work_dir / f"folder-{next(self._ids):05d}.jsonl"
        cfg = settings.config(self, (str(src),), str(dst), recursive=True, log_jsonl=str(events))
        box: dict = {}
        thread = threading.Thread(target=lambda: box.update(zip(("rc", "err"), self._run(cfg))), daemon=True)
        self._job = thread
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.5)
                yield self._folder_progress(events, dst, False, "")
        finally:
            self._job = None
        rc, err = box.get("rc", 130), box.get("err", "")
        yield self._folder_progress(events, dst, True, self._folder_message(rc, err, dst))

    def stop(self) -> bool:
        """Stop the running folder job as Ctrl-C stops ``ccsr upscale``: outputs already computed are
        written, nothing half-written is left, and the same job resumes. False if none runs."""
        job = self._job
        if job is None or not job.is_alive() or job.ident is None:
            return False
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(job.ident), ctypes.py_object(KeyboardInterrupt)
        )
        return True

    def _folder_progress(self, events: Path, dst: Path, finished: bool, message: str) -> FolderProgress:
        recs = []
        if events.is_file():
            for line in events.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    recs.append(json.loads(line))
        total = next((r.get("to_do", 0) for r in recs if r.get("event") == "start"), 0)
        done = sum(1 for r in recs if r.get("event") in ("image", "failed"))
        from ccsr.upscale.manifest import read_manifest

        outs = [dst / rel for rel in read_manifest(dst / "manifest.jsonl") if (dst / rel).is_file()]
        return FolderProgress(min(done, total) if total else done, total, outs[-24:], message, finished)

    @staticmethod
    def _folder_message(rc: int, err: str, dst: Path) -> str:
        run = dst / "run.json"
        summary = ""
        if run.is_file():
            c = json.loads(run.read_text()).get("counts", {})
            summary = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in c.items())
        failures = dst / "failures.txt"
        failed = failures.read_text().strip().splitlines() if failures.is_file() else []
        head = {
            0: "Finished.",
            1: f"Finished with {len(failed)} failure(s) (listed in {failures}).",
            2: f"Not started: {err.strip()}",
            130: "Stopped: the outputs already computed are written; run again to resume.",
        }.get(rc, f"Ended with status {rc}: {err.strip()}")
        lines = [head] + ([summary] if summary else []) + [f"- {f}" for f in failed[:20]]
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------ evaluate
    def evaluate(self, run_dir: str, gt_dir: str | None) -> str:
        """The HTML report of ``ccsr evaluate`` for a run folder, self-contained (images inlined)."""
        from ccsr.metrics.report import write_report

        if not run_dir or not Path(run_dir).expanduser().is_dir():
            raise UserError(f"run folder {run_dir!r} does not exist")
        gt = Path(gt_dir).expanduser() if gt_dir else None
        if gt is not None and not gt.is_dir():
            raise UserError(f"ground-truth folder {gt_dir!r} does not exist")
        out = self.work_dir / f"report-{next(self._ids):05d}"
        with self._lock:
            try:
                page = write_report(Path(run_dir).expanduser(), gt, out_dir=out)
            except (ValueError, ImportError, OSError) as e:
                raise UserError(f"no report: {e}") from None
        return inline_images(page)

    # ------------------------------------------------------------------------------------------ common
    def _run(self, cfg: UpscaleConfig) -> tuple[int, str]:
        """``run_upscale(cfg)`` with the loaded pipeline, one at a time; returns (status, its stderr)."""
        err = io.StringIO()
        with self._lock, contextlib.redirect_stderr(_Tee(err)):
            try:
                rc = run_upscale(cfg, pipe=self.pipe)
            except KeyboardInterrupt:  # stopped before the runner's own handler was reached
                rc = 130
        return rc, err.getvalue()


class _Tee(io.TextIOBase):
    """Writes to a buffer and to the server's own stderr."""

    def __init__(self, buf: io.StringIO) -> None:
        import sys

        self.buf, self.orig = buf, sys.stderr

    def write(self, s: str) -> int:
        self.buf.write(s)
        return self.orig.write(s)

    def flush(self) -> None:
        self.orig.flush()


def inline_images(page: Path) -> str:
    """The report's HTML with its ``report_files/`` images as data URIs, so it shows without a file server."""
    html = page.read_text(encoding="utf-8")

    def data_uri(m: re.Match) -> str:
        f = page.parent / m.group(2)
        if not f.is_file():
            return m.group(0)
        return f'{m.group(1)}="data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}"'

    return re.sub(r'(src|href)="([^"]+\.png)"', data_uri, html)
