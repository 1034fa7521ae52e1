"""Inputs with several frames: multi-page TIFF and animations (GIF, animated WebP, APNG).

With ``--frames all`` (the default) every frame is upscaled; ``--frames first`` upscales the first
frame only, as a still image. The output container is decided by the input and ``--format``:

* a multi-page TIFF becomes a multi-page TIFF (``.tif``, each page at its own size), whatever ``--format``;
* an animation becomes an APNG with ``--format png``, else an animated WebP (``.webp``), with the
  input's frame durations and loop count.

Each (image, frame) is one unit of the run: frame ``k`` of output ``REL`` is first written, lossless,
to ``RUN/.ccsr-frames/REL.frameKKKKK.png`` and recorded in ``manifest.jsonl`` like any output, so a
killed run resumes mid-animation. When the last frame is in, the frames are put together into ``REL``
(recorded with ``"frames": N``) and the frame files removed. Every frame uses the same seed (``--seed
+ sample``): a still scene stays still instead of flickering with fresh noise per frame. EXIF and ICC
are not carried into multi-frame outputs.
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ccsr.upscale.limits import Header

#: Folder (inside a run folder) of the frames waiting to be put together.
PARTS_DIR = ".ccsr-frames"


def container_ext(header: Header | None, output_format: str, frames: str) -> str | None:
    """The output extension of a multi-frame input, or None when it is written as a still image."""
    if frames != "all" or header is None or header.kind == "still" or header.frames < 2:
        return None
    if header.kind == "pages":
        return ".tif"
    return ".png" if output_format == "png" else ".webp"


def frame_rel(final_rel: str, k: int) -> str:
    """Where frame ``k`` of output ``final_rel`` waits, relative to the run folder."""
    return f"{PARTS_DIR}/{final_rel}.frame{k:05d}.png"


def assemble(run_dir: Path, final_rel: str, header: Header, quality: int) -> tuple[bytes, list[str]]:
    """Put the frame files of ``final_rel`` together into the container its extension names."""
    notes: list[str] = []
    frames: list[Image.Image] = []
    for k in range(header.frames):
        with Image.open(run_dir / frame_rel(final_rel, k)) as im:
            im.load()
            frames.append(im)
    ext = PurePosixPath(final_rel).suffix
    buf = io.BytesIO()
    if ext == ".tif":
        frames = [_tiff_mode(im, notes) for im in frames]
        frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
        return buf.getvalue(), notes
    alpha = any(im.mode in ("LA", "RGBA", "PA") or "transparency" in im.info for im in frames)
    if any(im.mode.startswith("I") for im in frames):
        notes.append("16-bit reduced to 8 bits: animations hold 8 bits")
    frames = [_to8(im).convert("RGBA" if alpha else "RGB") for im in frames]
    loop = 1 if header.loop is None else header.loop  # no loop record: play once, as the input does
    timing = dict(duration=list(header.durations), loop=loop)
    if ext == ".png":
        frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:], **timing)
    else:
        frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], quality=quality, **timing)
    return buf.getvalue(), notes


def _to8(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I"):  # 16-bit gray: scale to 8 bits, not clip
        return Image.fromarray(np.round(np.asarray(im, np.float32) / 257.0).astype(np.uint8), "L")
    return im


def _tiff_mode(im: Image.Image, notes: list[str]) -> Image.Image:
    if im.mode in ("L", "LA", "RGB", "RGBA", "I;16"):
        return im
    note = f"{im.mode} frame written as 8-bit in the multi-page tiff"
    if note not in notes:
        notes.append(note)
    return _to8(im).convert("RGBA" if "A" in im.mode else "RGB")


def remove_frames(run_dir: Path, final_rel: str, n: int) -> None:
    """Delete the frame files of ``final_rel`` and the folders they leave empty."""
    for k in range(n):
        (run_dir / frame_rel(final_rel, k)).unlink(missing_ok=True)
    folder = (run_dir / frame_rel(final_rel, 0)).parent
    root = run_dir / PARTS_DIR
    while folder != run_dir and (folder == root or root in folder.parents):
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent
