"""The work loop of a folder run: decode ahead, run the model, encode and write behind.

The model runs in the calling thread, one (image, sample) at a time, with noise from a CPU
``torch.Generator`` seeded ``seed + sample``: results do not depend on batch, order, thread or
process. Reader and writer threads overlap file I/O with compute through bounded queues, so memory
holds at most ``2 * workers`` decoded images and ``2 * workers`` finished ones.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import functools
import hashlib
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ccsr.atomic import atomic_write
from ccsr.encode import encode_image, resize_alpha, to_output_pixels
from ccsr.io import ImageData, ImageReadError, read_image
from ccsr.upscale.config import UpscaleConfig
from ccsr.upscale.derived import derive_output
from ccsr.upscale.frames import assemble, frame_rel, remove_frames
from ccsr.upscale.jobs import Job, Task
from ccsr.upscale.runlog import Failure, RunLog, Tally, now_iso
from ccsr.upscale.settings import RunSettings

#: What the writer takes: a float ``(3, H, W)`` output, or a rendered picture (the uncertainty heat map).
Output = np.ndarray | Image.Image

#: Write errors that are about the folder, not the image: the run stops after the image in progress.
FOLDER_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}
)


@dataclass
class Loaded:
    """A decoded input, made ready in a reader thread."""

    image: ImageData
    model_input: Image.Image  # 8-bit RGB, what the pipeline sees
    alpha: np.ndarray | None  # alpha upscaled to the output size
    input_stat: os.stat_result  # taken before reading: the manifest records what was read


def _read(job: Job, cfg: UpscaleConfig) -> Loaded | str:
    """Runs in a reader thread: decode, build the model input, upscale alpha. A str is a failure reason."""
    try:
        st = job.file.path.stat()
        img = read_image(job.file.path, cfg.max_pixels, job.frame)
        alpha = None
        if img.alpha is not None:
            alpha = resize_alpha(img.alpha, (img.size[0] * cfg.scale, img.size[1] * cfg.scale))
        return Loaded(img, img.model_input(), alpha, st)
    except ImageReadError as e:
        return str(e)
    except MemoryError:
        return "not enough memory to decode it"
    except Exception as e:  # a decoder bug on one odd file must not end the run
        return f"could not be decoded ({_reason(e)})"


def _prefetch(
    items: list[Job], fn: Callable[[Job], object], pool: cf.Executor | None, depth: int
) -> Iterator:
    """``(item, fn(item))`` in order, with up to ``depth`` items decoded ahead in ``pool``."""
    if pool is None:
        for it in items:
            yield it, fn(it)
        return
    queue: deque = deque()
    source = iter(items)
    for it in source:
        queue.append((it, pool.submit(fn, it)))
        if len(queue) >= depth:
            break
    while queue:
        it, fut = queue.popleft()
        nxt = next(source, None)
        if nxt is not None:
            queue.append((nxt, pool.submit(fn, nxt)))
        yield it, fut.result()


def process(shard: list[Job], pipe, cfg: UpscaleConfig, log: RunLog, tally: Tally) -> None:
    """Upscale every job of ``shard`` with ``pipe`` (a loaded ``CCSRPipeline``), adding to ``tally``.

    Ctrl-C / SIGTERM stop it cleanly: outputs already computed are still written, nothing half-done is left.
    """
    workers = cfg.resolved_workers(pipe._execution_device.type)
    readers = cf.ThreadPoolExecutor(workers, thread_name_prefix="ccsr-read") if workers else None
    outputs = _Outputs(cfg, tally, log, workers)
    log.start_bar(len(shard))
    loop0 = time.perf_counter()
    started = 0
    restore = _sigterm_as_interrupt()
    try:
        for job, loaded in _prefetch(shard, lambda j: _read(j, cfg), readers, max(2, 2 * workers)):
            if tally.stopped:  # the output folder stopped taking files: no new image is started
                break
            started += 1
            if isinstance(loaded, str):
                outputs.fail(Failure(str(job.file.path), loaded))
                log.image_failed()
            else:
                _run_job(pipe, job, loaded, outputs)
    except KeyboardInterrupt:
        tally.interrupted = True
        tally.not_started = len(shard) - started
        log.say("interrupted: finishing the outputs already computed (no partial files are left)")
    finally:
        if tally.stopped:
            tally.not_started = len(shard) - started
        restore()
        if readers is not None:
            readers.shutdown(wait=True, cancel_futures=True)
        outputs.close()
        failed = {f.input for f in tally.failures}
        tally.images_done += sum(1 for d in outputs.done if d not in failed)
        tally.loop_seconds += time.perf_counter() - loop0
        tally.peak_gpu_bytes = max(tally.peak_gpu_bytes, _peak_gpu_bytes())


def _run_job(pipe, job: Job, loaded: Loaded, outputs: _Outputs) -> None:
    """Every task of one job: the samples through the pipeline, then the outputs derived from them; each
    output written goes to ``outputs``. One task's failure is recorded and the others go on."""
    cfg = outputs.cfg
    t0 = time.perf_counter()
    ok = 0
    derived = [t for t in job.tasks if t.kind != "sample"]
    kept: dict = {}  # (run folder, sample) -> (sr, info), for the derived outputs
    sr: Output
    for task in [t for t in job.tasks if t.kind == "sample"] + derived:
        try:
            if task.kind == "sample":
                on_tile = functools.partial(outputs.log.tile, job.file.rel)
                sr, info = _upscale(pipe, job, loaded, task, cfg, on_tile)
            else:
                sr, info = derive_output(task, kept, cfg)
        except Exception as e:  # one image's model failure must not end a 10k-image run
            outputs.fail(Failure(str(job.file.path), _reason(e), _steps_of(cfg, task)))
            continue
        ok += 1
        if derived and task.kind == "sample":
            kept[(task.run.dir, task.sample)] = (sr, info)
        if task.rel is not None:
            outputs.submit(job, task, loaded, sr, info)
    outputs.image_done(job, ok, time.perf_counter() - t0)


def _peak_gpu_bytes() -> int:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def _steps_of(cfg: UpscaleConfig, task: Task) -> int | None:
    return task.run.steps if len(cfg.steps) > 1 else None


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _canvas_size(job: Job, image: ImageData, settings: RunSettings) -> tuple[int, int]:
    """The canvas the model works on, from the resize plan the size limits made from the header; planned
    here when the decoded image's size differs (no header, or a PNG turned by EXIF after its pixel data)."""
    from ccsr.image import plan_resize

    plan = job.plan
    if plan is None or plan.input_size != image.size:
        plan = plan_resize(image.size, settings.scale, settings.process_size)
    return plan.canvas_size


def _upscale(
    pipe, job: Job, loaded: Loaded, task: Task, cfg: UpscaleConfig, on_tile: Callable[[int, int], None]
) -> tuple[np.ndarray, dict]:
    """One (image, sample) through the pipeline: ``(3, H, W)`` float32 in ``[0, 1]`` at the output size,
    plus what the manifest records about how it was made. ``on_tile(done, total)`` reports tiled progress."""
    import torch

    img = loaded.image
    # The settings the plan resolved, hashed and recorded are the ones that run (nothing is re-decided).
    settings = task.run.resolved
    tiling = settings.tiling
    latent_tiles, vae_tiles = tiling.for_canvas(_canvas_size(job, img, settings))
    kwargs = settings.pipeline_kwargs(img.bit_depth)

    def call(tiled: bool, vae: bool):
        gen = torch.Generator("cpu").manual_seed(cfg.seed + task.sample)
        window = dict(tile_size=tiling.tile_size, tile_stride=tiling.tile_stride, tile_callback=on_tile)
        return pipe(
            loaded.model_input,
            generator=gen,
            vae_tiling=vae,
            output_type="pt",
            **(window if tiled else {}),
            **kwargs,
        )

    try:
        out = call(latent_tiles, vae_tiles)
    except torch.cuda.OutOfMemoryError:
        if latent_tiles and vae_tiles:
            raise
        # Out of GPU memory untiled: the same image tiled needs memory for one tile only.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        latent_tiles = vae_tiles = True
        out = call(True, True)
    sr = out.images[0].float().cpu().numpy()
    return sr, {
        "timesteps": list(out.timesteps),
        "tiled": latent_tiles,
        "vae_tiled": vae_tiles,
        "postprocess": kwargs["postprocess"],
    }


class _Outputs:
    """The write side of the loop: each finished output is encoded, written atomically and recorded, in
    this thread or in ``workers`` writer threads (at most ``2 * workers`` waiting); failures and counts
    go to ``tally`` under one lock."""

    def __init__(self, cfg: UpscaleConfig, tally: Tally, log: RunLog, workers: int) -> None:
        self.cfg, self.tally, self.log = cfg, tally, log
        self.lock = threading.Lock()
        self.done: set[str] = set()  # inputs whose outputs were all computed (writes may still fail)
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="ccsr-write") if workers else None
        self._slots = threading.BoundedSemaphore(max(2, 2 * workers))  # finished images waiting

    def submit(self, job: Job, task: Task, loaded: Loaded, sr: Output, info: dict) -> None:
        if self._pool is None:
            self._write(job, task, loaded, sr, info)
            return
        self._slots.acquire()
        fut = self._pool.submit(self._write, job, task, loaded, sr, info)
        fut.add_done_callback(lambda _f: self._slots.release())

    def fail(self, f: Failure) -> None:
        with self.lock:
            self.tally.failures.append(f)
        self.log.failure(f)

    def image_done(self, job: Job, ok: int, seconds: float) -> None:
        """One job's tasks are computed, ``ok`` of them without error."""
        if ok != len(job.tasks):
            self.log.image_failed()
            return
        self.done.add(str(job.file.path))
        with self.lock:
            self.tally.image_seconds.append(seconds)
        label = job.file.rel + (f" [frame {job.frame + 1}/{job.header.frames}]" if job.header else "")
        self.log.image_done(label, seconds, ok)

    def close(self) -> None:
        """Wait for the writes in flight."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _write(self, job: Job, task: Task, loaded: Loaded, sr: Output, info: dict) -> None:
        """Runs in a writer thread: quantise, encode, write atomically, record in the manifest."""
        assert task.rel is not None, "a sample computed only to derive others is not written"
        out = task.run.dir / task.rel
        notes: list[str] | None
        try:
            data, notes = _encode(task, loaded, sr, self.cfg)
            _write_recorded(out, data, task, _entry(job, task, loaded, self.cfg, data, notes, info))
            if task.final is not None:
                notes = _assemble_when_complete(job, task, loaded, self.cfg)
        except Exception as e:
            why = f"could not write {out}: {_reason(e)}"
            self.fail(Failure(str(job.file.path), why, _steps_of(self.cfg, task)))
            if isinstance(e, OSError) and e.errno in FOLDER_ERRNOS:
                with self.lock:
                    self.tally.stopped = (
                        self.tally.stopped or f"{out.parent} cannot be written ({e.strerror or e})"
                    )
            return
        with self.lock:
            if task.final is None or notes is not None:
                self.tally.outputs[task.run.steps] = self.tally.outputs.get(task.run.steps, 0) + 1
            for n in notes or ():
                if n not in self.tally.notes:
                    self.tally.notes.append(n)
                    self.log.say(f"note: {n}")


def _encode(task: Task, loaded: Loaded, sr: Output, cfg: UpscaleConfig) -> tuple[bytes, list[str]]:
    """The file's bytes and what it could not keep: an output in the run's format, a frame as PNG, a
    rendered picture (the uncertainty heat map) as plain PNG."""
    img = loaded.image
    if isinstance(sr, Image.Image):
        return encode_image(np.asarray(sr.convert("RGB")), None, "png")
    pixels = to_output_pixels(sr, img.gray, img.bit_depth)
    if task.final is None:
        return encode_image(pixels, loaded.alpha, cfg.output_format, cfg.quality, img.icc_profile, img.exif)
    return encode_image(pixels, loaded.alpha, "png")  # a frame waits losslessly for the others


def _entry(job: Job, task: Task, loaded: Loaded, cfg: UpscaleConfig, data: bytes, notes, info: dict) -> dict:
    """The manifest line of one output (without the final file's size and mtime)."""
    st_in = loaded.input_stat
    entry = {
        "input": job.file.rel,
        "source": str(job.file.path),
        "output": task.rel,
        "sample": task.sample,
        "seed": cfg.seed + task.sample,
        "steps": task.run.steps,
        "settings": task.settings or task.run.hash,
        "input_bytes": st_in.st_size,
        "input_mtime_ns": st_in.st_mtime_ns,
        "input_sha256": loaded.image.sha256,
        "output_sha256": hashlib.sha256(data).hexdigest(),
        "finished": now_iso(),
        **info,
    }
    if task.final is not None:
        entry["frame"] = job.frame
    if notes:
        entry["notes"] = notes  # what this output could not keep (alpha, bits, metadata)
    return entry


def _write_recorded(out: Path, data: bytes, task: Task, entry: dict) -> None:
    """Atomic write of ``out``, listed in the manifest before it appears under its name."""

    writer = task.run.writer
    assert writer is not None, "the run's manifest is opened before the loop starts"

    def record(st) -> None:
        if out.exists():  # --overwrite: drop the old file first, see ccsr.upscale.manifest on the ordering
            out.unlink()
        writer.append({**entry, "output_bytes": st.st_size, "output_mtime_ns": st.st_mtime_ns})

    atomic_write(out, data, record)


_ASSEMBLY = threading.Lock()


def _assemble_when_complete(job: Job, task: Task, loaded: Loaded, cfg: UpscaleConfig) -> list[str] | None:
    """After a frame is written: when every frame of ``task.final`` is on disk, write the multi-frame
    output and remove the frame files. Returns the notes of the output written, or None (not yet)."""
    header, final, run = job.header, task.final, task.run
    assert header is not None and final is not None, "only the frames of a multi-frame output are assembled"
    with _ASSEMBLY:  # frames finish in several writer threads: one of them puts them together
        if final in run.assembled:
            return None
        if not all((run.dir / frame_rel(final, k)).is_file() for k in range(header.frames)):
            return None
        data, notes = assemble(run.dir, final, header, cfg.quality)
        whole = Task(run, task.sample, final)
        entry = _entry(job, whole, loaded, cfg, data, notes, {"frames": header.frames})
        _write_recorded(run.dir / final, data, whole, entry)
        run.assembled.add(final)
        remove_frames(run.dir, final, header.frames)
    return notes


def _sigterm_as_interrupt() -> Callable[[], None]:
    """A scheduler's SIGTERM (preemption) stops the run like Ctrl-C. Returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)

    def undo() -> None:
        signal.signal(signal.SIGTERM, old)

    return undo
