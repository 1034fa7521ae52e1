"""Reading real image files for ``ccsr upscale``, and writing files atomically.

What a folder of photographs contains, and what we do with it:

* formats: PNG, JPEG, WebP, TIFF, BMP, GIF (anything else Pillow reads is accepted when named explicitly);
* EXIF orientation is applied to the pixels, and the carried-over EXIF says ``Orientation = 1``;
* grayscale stays grayscale, 16-bit stays 16-bit (PNG and TIFF; Pillow truncates 16-bit colour to
  8 bits, so those files are decoded with OpenCV). Gray is decided by the file's own colour type (PNG
  IHDR, TIFF PhotometricInterpretation), not by the mode Pillow converts it to: a 16-bit gray+alpha
  PNG opens as RGBA in Pillow and is still gray;
* alpha is split off, upscaled on its own (bicubic) and re-attached: only RGB goes through the model;
* palette images become RGB(A), CMYK/YCbCr/LAB become RGB (through the embedded ICC profile when
  there is one, whose profile is then dropped because it describes the old colour space);
* EXIF and ICC profile are kept for the writer (:mod:`ccsr.encode`);
* bad files raise :class:`ImageReadError` with one line saying why; sizes are checked from the
  header before any pixel is decoded (decompression-bomb guard, with our ``--max-pixels`` limit in the
  message, never Pillow's internal one);
* outputs are written to a temporary file in the same folder and renamed over the target, so a
  killed process leaves either the old file, the new file, or nothing, never half an image.

Arrays are ``(H, W, C)`` uint8 or uint16 with ``C = 1`` (gray) or ``3`` (RGB); alpha is ``(H, W)``
of the same dtype.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

#: Extensions picked up when a folder is scanned (case-insensitive).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
)
#: ``--format`` choice -> (file extension, Pillow format name).
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    "png": (".png", "PNG"),
    "jpg": (".jpg", "JPEG"),
    "webp": (".webp", "WEBP"),
    "tiff": (".tif", "TIFF"),
    "bmp": (".bmp", "BMP"),
}
#: Inputs larger than this many pixels are refused unless the caller raises the limit.
DEFAULT_MAX_PIXELS = 64_000_000
#: Smaller inputs carry too little to upscale (and break the x8 canvas rule at low scales).
MIN_SIDE = 8
_EXIF_ORIENTATION = 0x0112
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(Exception):
    """A file that cannot be upscaled; ``str(e)`` is the one-line reason."""


@dataclass
class ImageData:
    """A decoded, upright image and the metadata to carry over."""

    color: np.ndarray  # (H, W, 1 | 3), uint8 | uint16
    alpha: np.ndarray | None  # (H, W), same dtype as color
    icc_profile: bytes | None
    exif: bytes | None  # orientation already applied and reset to 1
    source_format: str
    sha256: str  # of the file's bytes

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return self.color.shape[1], self.color.shape[0]

    @property
    def bit_depth(self) -> int:
        return 16 if self.color.dtype == np.uint16 else 8

    @property
    def gray(self) -> bool:
        return self.color.shape[2] == 1

    def model_input(self) -> Image.Image:
        """The 8-bit RGB image the model sees (16-bit is rounded to 8; gray is replicated)."""
        c = self.color
        if c.dtype == np.uint16:
            c = np.round(c.astype(np.float32) / 257.0).astype(np.uint8)
        if c.shape[2] == 1:
            c = np.repeat(c, 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(c), "RGB")


# ---------------------------------------------------------------------------------------------- reading
def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int = 0) -> ImageData:
    """Decode ``path`` (its ``frame``-th page or animation frame, composited as shown) into an upright
    :class:`ImageData`; raise :class:`ImageReadError` with the reason."""
    data = _read_bytes(Path(path))
    color, alpha, icc, exif, orientation, fmt = _decode_bytes(data, max_pixels, frame)
    color, alpha = _orient(color, orientation), (None if alpha is None else _orient(alpha, orientation))
    hh, ww = color.shape[:2]
    if min(ww, hh) < MIN_SIDE:
        raise ImageReadError(
            f"too small: {ww}x{hh} pixels; inputs need at least {MIN_SIDE} pixels on each side"
        )
    return ImageData(color, alpha, icc, exif, fmt, hashlib.sha256(data).hexdigest())


def _read_bytes(path: Path) -> bytes:
    """The whole file; a broken link, a folder, an unreadable or empty file is an :class:`ImageReadError`."""
    if path.is_symlink() and not path.exists():
        raise ImageReadError("broken symbolic link")
    if not path.is_file():
        raise ImageReadError("not a regular file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(f"cannot be read: {e.strerror or e}") from e
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    return data


def _decode_bytes(data: bytes, max_pixels: int, frame: int):
    """:func:`_decode` of the file's bytes, after the pixel-count guard; Pillow's errors become
    :class:`ImageReadError` naming the file's state."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        # Pillow's own guard (a process-wide setting) must not be stricter than the caller's limit.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(_too_large(w, h, max_pixels))
            return _decode(im, data, frame)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not an image (no image format recognised in its contents)") from None
    except Image.DecompressionBombError as e:  # Pillow's guard fired before ours could read the size
        raise ImageReadError(_too_large_pixels(e, max_pixels)) from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        # Pillow signals truncated / corrupt data with these; name the file's state, not the internals.
        raise ImageReadError(f"truncated or corrupt image data ({e})") from None


def _too_large(w: int, h: int, limit: int) -> str:
    return (
        f"too large: {w}x{h} = {w * h / 1e6:.1f} MP is above the limit of {limit / 1e6:.1f} MP "
        "(decompression-bomb guard); pass --max-pixels to allow larger inputs"
    )


def _too_large_pixels(e: Exception, limit: int) -> str:
    """Our message for Pillow's ``DecompressionBombError`` (which quotes Pillow's limit, not ours)."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{int(m.group(1)) / 1e6:.1f} MP" if m else "its pixel count"
    return (
        f"too large: {size} is above the limit of {limit / 1e6:.1f} MP "
        "(decompression-bomb guard); pass --max-pixels to allow larger inputs"
    )


def _decode(im: Image.Image, data: bytes, frame: int = 0):
    """-> (color, alpha, icc, exif bytes, exif orientation, format name)."""
    fmt = im.format or "unknown"
    icc = im.info.get("icc_profile") or None
    exif, orientation = _exif_of(im, fmt)
    if frame >= int(getattr(im, "n_frames", 1) or 1):
        raise ImageReadError(f"has no frame {frame} (it has {getattr(im, 'n_frames', 1)})")
    im.seek(frame)
    gray = _file_is_gray(im, data)
    if _is_16bit_color(im, data):
        color, alpha = _decode_16bit(data, gray, frame)
        return color, alpha, icc, exif, orientation, fmt
    im.load()
    if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(_to_srgb(im, icc)), None, None, exif, orientation, fmt
    color, alpha = _pixels(_plain_mode(im), gray)
    return color, alpha, icc, exif, orientation, fmt


def _exif_of(im: Image.Image, fmt: str) -> tuple[bytes | None, int]:
    """The EXIF block to carry over (orientation reset to upright) and the EXIF orientation."""
    exif_obj = im.getexif()
    orientation = int(exif_obj.get(_EXIF_ORIENTATION, 1) or 1)
    # TIFF "EXIF" from getexif() is the TIFF's own IFD (strip offsets, compression...), not a camera
    # record to copy; only formats with a real EXIF block carry it over.
    if fmt not in ("JPEG", "MPO", "PNG", "WEBP") or not len(exif_obj):
        return None, orientation
    if _EXIF_ORIENTATION in exif_obj:
        exif_obj[_EXIF_ORIENTATION] = 1
    return exif_obj.tobytes(), orientation


def _plain_mode(im: Image.Image) -> Image.Image:
    """``im`` in a mode whose array is its pixels: palettes expanded, premultiplied alpha undone, 1-bit as
    8-bit, RGBX as RGB. 32-bit float images are refused."""
    mode = im.mode
    if mode in ("P", "PA"):
        return im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
    if mode in ("RGBa", "La"):
        return im.convert("RGBA" if mode == "RGBa" else "LA")
    if mode == "1":
        return im.convert("L")
    if mode == "RGBX":
        return im.convert("RGB")
    if mode == "F":
        raise ImageReadError("32-bit float images are not supported; convert it to 8- or 16-bit first")
    return im


def _pixels(im: Image.Image, gray: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``(color (H, W, 1 or 3), alpha or None)`` of an image in a plain mode, 8 or 16 bits."""
    mode = im.mode
    arr = np.asarray(im)
    if mode.startswith("I"):
        arr = arr.astype(np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageReadError(f"{mode} image with values outside 0..65535 is not supported")
        arr = arr.astype(np.uint16)
    alpha = None
    if mode in ("RGBA", "LA"):
        arr, alpha = arr[..., :-1], np.ascontiguousarray(arr[..., -1])
    if arr.ndim == 2:
        arr = arr[..., None]
    if gray and arr.shape[2] == 3:
        arr = arr[..., :1]
    return np.ascontiguousarray(arr), alpha


def _file_is_gray(im: Image.Image, data: bytes) -> bool:
    """Gray by the file's own colour type where the format states one, else by Pillow's mode."""
    if im.format == "PNG" and data[12:16] == b"IHDR":
        colour_type = data[25]
        if colour_type in (0, 4):  # gray, gray+alpha (Pillow opens 16-bit gray+alpha as RGBA)
            return True
        if colour_type in (2, 6):
            return False
    if im.format == "TIFF":
        photometric = im.tag_v2.get(262)  # type: ignore[attr-defined]  # a TiffImageFile
        if photometric in (0, 1):  # WhiteIsZero, BlackIsZero: gray samples, alpha or not
            return True
        if photometric is not None and photometric != 3:
            return False
    return im.mode in _GRAY_MODES or (im.mode == "P" and _palette_is_gray(im))


def _palette_is_gray(im: Image.Image) -> bool:
    # getpalette() decodes a palette still held as raw file data (a GIF frame not loaded yet), which
    # Pillow 12's ImagePalette.tobytes() refuses; "RGB" asks for RGB entries whatever the palette's mode.
    entries = im.getpalette("RGB")
    if not entries or len(entries) % 3:
        return False
    pal = np.asarray(entries, np.uint8).reshape(-1, 3)
    return bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())


def _is_16bit_color(im: Image.Image, data: bytes) -> bool:
    """16-bit files that Pillow would truncate to 8 bits (colour or gray+alpha)."""
    if im.format == "PNG" and data[12:16] == b"IHDR":
        return data[24] == 16 and data[25] in (2, 4, 6)  # truecolour, gray+alpha, truecolour+alpha
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))  # type: ignore[attr-defined]  # a TiffImageFile
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) == 16 and len(bits) > 1
    return False


def _decode_16bit(data: bytes, gray: bool, frame: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    cv2 = _cv2()
    buf = np.frombuffer(data, np.uint8)
    if frame:
        ok, pages = cv2.imdecodemulti(buf, cv2.IMREAD_UNCHANGED)
        arr = pages[frame] if ok and frame < len(pages) else None
    else:
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError("truncated or corrupt 16-bit image data")
    if arr.dtype != np.uint16:
        arr = arr.astype(np.uint16) * 257 if arr.dtype == np.uint8 else arr
    if arr.ndim == 2:
        return arr[..., None], None
    alpha = np.ascontiguousarray(arr[..., 3]) if arr.shape[2] == 4 else None
    rgb = arr[..., 2::-1]  # OpenCV is BGR(A)
    color = rgb[..., :1] if gray else rgb
    return np.ascontiguousarray(color), alpha


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if icc and im.mode == "CMYK":
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            return cast(
                Image.Image, ImageCms.profileToProfile(im, src, srgb, outputMode="RGB")
            )  # not in place
        except Exception:  # a broken or unsupported profile: fall back to Pillow's plain conversion
            pass
    return im.convert("RGB")


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1-8 (the same transforms as ``PIL.ImageOps.exif_transpose``)."""
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.swapaxes(0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x.swapaxes(0, 1)[::-1, ::-1],
        8: lambda x: np.rot90(x, 1),
    }
    op = ops.get(orientation)
    return a if op is None else np.ascontiguousarray(op(a))


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - opencv is a dependency
        raise ImageReadError("16-bit colour images need OpenCV: pip install opencv-python-headless") from e
    return cv2
