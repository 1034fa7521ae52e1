"""Size limits of a folder run, decided from file headers before any work (no pixel is decoded).

Three sizes count, each against a limit:

* the input, against ``--max-pixels`` (decompression-bomb guard, also enforced when decoding);
* the **canvas** the model works on: the reference's resize plan (:func:`ccsr.image.plan_resize`)
  enlarges a small side to ``--process-size`` before the x``--scale`` upscale, so an 8x5000 strip at
  x4 becomes a 512x320000 canvas (164 MP) although its output is 32x20000;
* the output (input x ``--scale``);

canvas and output against ``--max-output-pixels`` (default 64 MP). An input over a limit is one
failure with a message naming the input, the size and the options to change; the rest of the run goes
on. Without a readable header the file is left to the decoder, which names what is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ccsr.image import ResizePlan, plan_resize

#: Default of ``--max-output-pixels``: a 4K photograph at x2 fits, at the default x4 it does not.
DEFAULT_MAX_OUTPUT_PIXELS = 64_000_000


#: Formats whose extra frames are upscaled: pages of a TIFF, frames of an animation.
MULTI_FRAME_FORMATS = {"TIFF": "pages", "GIF": "animation", "WEBP": "animation", "PNG": "animation"}


@dataclass(frozen=True)
class Header:
    """What a file's header says: pixel size of each frame (upright), frame durations and loop count."""

    sizes: tuple[tuple[int, int], ...]
    kind: str = "still"  # "still", "pages" (multi-page TIFF) or "animation" (GIF, WebP, APNG)
    durations: tuple[int, ...] = ()  # milliseconds per frame (animations)
    loop: int | None = None  # Pillow's "loop" (0: forever; None: the file says nothing, play once)

    @property
    def frames(self) -> int:
        return len(self.sizes)


def read_header(path: Path, max_frames: int = 10_000) -> Header | None:
    """Sizes from the header (EXIF rotation applied); None when the file cannot be read as an image."""
    try:
        with Image.open(path) as im:
            n = min(int(getattr(im, "n_frames", 1) or 1), max_frames)
            kind = MULTI_FRAME_FORMATS.get(im.format or "", "still") if n > 1 else "still"
            if kind == "still":
                n = 1
            sizes, durations = [], []
            loop = im.info.get("loop")
            for k in range(n):
                if k:
                    im.seek(k)
                w, h = im.size
                if k == 0 and _turned(im):
                    w, h = h, w
                sizes.append((w, h))
                if kind == "animation" and im.format == "WEBP":
                    im.load()  # Pillow reads a WebP frame's duration only when decoding it
                durations.append(int(im.info.get("duration", 0) or 0))
            return Header(tuple(sizes), kind, tuple(durations), loop)
    except Exception:  # any reason: the decoder will report it precisely
        return None


def _turned(im: Image.Image) -> bool:
    """EXIF orientation 5-8 (a quarter turn), where the header holds it. A PNG's eXIf chunk may follow
    the pixel data, and Pillow decodes the whole image to reach it: PNG is taken as stored here (a turn
    changes the pixel counts checked here by at most the multiple-of-8 rounding)."""
    if im.format == "PNG":
        return False
    return int(im.getexif().get(0x0112, 1) or 1) in (5, 6, 7, 8)


def mp(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def plan_size(
    size: tuple[int, int], scale: int, process_size: int, max_pixels: int, max_output_pixels: int
) -> tuple[ResizePlan | None, str | None]:
    """The resize plan of an input of ``size`` (None: too small to plan, the decoder's size rule reports it),
    and why it may not run with these settings (None: it may). The reason names the option."""
    w, h = size
    if w * h > max_pixels:
        return None, (
            f"too large: {w}x{h} = {mp(w * h)} is above the limit of {mp(max_pixels)} "
            "(decompression-bomb guard); pass --max-pixels to allow larger inputs"
        )
    try:
        plan = plan_resize(size, scale, process_size)
    except ValueError:
        return None, None
    ow, oh = plan.output_size
    if ow * oh > max_output_pixels:
        return plan, (
            f"output too large: {w}x{h} at --scale {scale} is {ow}x{oh} = {mp(ow * oh)}, above "
            f"--max-output-pixels {mp(max_output_pixels)}; lower --scale or raise --max-output-pixels"
        )
    cw, ch = plan.canvas_size
    if cw * ch > max_output_pixels:
        return plan, (
            f"canvas too large: {w}x{h} is enlarged until its short side is --process-size {process_size}, "
            f"then x{scale}: the model would work on {cw}x{ch} = {mp(cw * ch)}, above --max-output-pixels "
            f"{mp(max_output_pixels)}; lower --process-size or --scale, or raise --max-output-pixels"
        )
    return plan, None


def output_pixels(size: tuple[int, int], scale: int) -> int:
    return size[0] * scale * size[1] * scale
