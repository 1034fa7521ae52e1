"""Reading and writing real image files for ``ccsr upscale``.

What a folder of photographs contains, and what we do with it:

* formats: PNG, JPEG, WebP, TIFF, BMP (anything else Pillow reads is accepted when named explicitly);
* EXIF orientation is applied to the pixels, and the carried-over EXIF says ``Orientation = 1``;
* grayscale stays grayscale, 16-bit stays 16-bit (PNG and TIFF; Pillow truncates 16-bit colour to
  8 bits, so those files are decoded and encoded with OpenCV);
* alpha is split off, upscaled on its own (bicubic) and re-attached: only RGB goes through the model;
* palette images become RGB(A), CMYK/YCbCr/LAB become RGB (through the embedded ICC profile when
  there is one, whose profile is then dropped because it describes the old colour space);
* EXIF and ICC profile are written back where the output format can hold them;
* bad files raise :class:`ImageReadError` with one line saying why; sizes are checked from the
  header before any pixel is decoded (decompression-bomb guard);
* outputs are written to a temporary file in the same folder and renamed over the target, so a
  killed process leaves either the old file, the new file, or nothing, never half an image.

Arrays are ``(H, W, C)`` uint8 or uint16 with ``C = 1`` (gray) or ``3`` (RGB); alpha is ``(H, W)``
of the same dtype.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

#: Extensions picked up when a folder is scanned (case-insensitive).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})
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
#: Marker in temporary file names, so stale ones from a killed run can be found and removed.
TEMP_TAG = ".ccsr-tmp-"
_EXIF_ORIENTATION = 0x0112
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's convert("L")


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
def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """Decode ``path`` into an upright :class:`ImageData`; raise :class:`ImageReadError` with the reason."""
    path = Path(path)
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
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        # Pillow's own guard (a process-wide setting) must not be stricter than the caller's limit.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(_too_large(w, h, max_pixels))
            img = _decode(im, data)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not an image (no image format recognised in its contents)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            f"too large: {e} (decompression-bomb guard); pass --max-pixels to allow it"
        ) from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        # Pillow signals truncated / corrupt data with these; name the file's state, not the internals.
        raise ImageReadError(f"truncated or corrupt image data ({e})") from None
    color, alpha, icc, exif, orientation, fmt = img
    color, alpha = _orient(color, orientation), (None if alpha is None else _orient(alpha, orientation))
    hh, ww = color.shape[:2]
    if min(ww, hh) < MIN_SIDE:
        raise ImageReadError(
            f"too small: {ww}x{hh} pixels; inputs need at least {MIN_SIDE} pixels on each side"
        )
    return ImageData(color, alpha, icc, exif, fmt, hashlib.sha256(data).hexdigest())


def _too_large(w: int, h: int, limit: int) -> str:
    return (
        f"too large: {w}x{h} = {w * h / 1e6:.1f} MP is above the limit of {limit / 1e6:.1f} MP "
        "(decompression-bomb guard); pass --max-pixels to allow larger inputs"
    )


def _decode(im: Image.Image, data: bytes):
    """-> (color, alpha, icc, exif bytes, exif orientation, format name)."""
    fmt = im.format or "unknown"
    icc = im.info.get("icc_profile") or None
    exif_obj = im.getexif()
    orientation = int(exif_obj.get(_EXIF_ORIENTATION, 1) or 1)
    exif = None
    # TIFF "EXIF" from getexif() is the TIFF's own IFD (strip offsets, compression...), not a camera
    # record to copy; only formats with a real EXIF block carry it over.
    if fmt in ("JPEG", "MPO", "PNG", "WEBP") and len(exif_obj):
        if _EXIF_ORIENTATION in exif_obj:
            exif_obj[_EXIF_ORIENTATION] = 1
        exif = exif_obj.tobytes()
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    gray = im.mode in _GRAY_MODES or (im.mode == "P" and _palette_is_gray(im))
    if _is_16bit_color(im, data):
        color, alpha = _decode_16bit(data, gray)
        return color, alpha, icc, exif, orientation, fmt
    im.load()
    mode = im.mode
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        rgb = _to_srgb(im, icc)
        return np.asarray(rgb), None, None, exif, orientation, fmt
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
        mode = im.mode
    elif mode in ("RGBa", "La"):
        im = im.convert("RGBA" if mode == "RGBa" else "LA")
        mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "RGBX":
        im, mode = im.convert("RGB"), "RGB"
    if mode == "F":
        raise ImageReadError("32-bit float images are not supported; convert it to 8- or 16-bit first")
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
    return np.ascontiguousarray(arr), alpha, icc, exif, orientation, fmt


def _palette_is_gray(im: Image.Image) -> bool:
    pal = np.frombuffer(im.palette.tobytes(), np.uint8) if im.palette is not None else None
    if pal is None or im.palette.mode != "RGB" or pal.size % 3:
        return False
    pal = pal.reshape(-1, 3)
    return bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())


def _is_16bit_color(im: Image.Image, data: bytes) -> bool:
    """16-bit files that Pillow would truncate to 8 bits (colour or gray+alpha)."""
    if im.format == "PNG" and data[12:16] == b"IHDR":
        return data[24] == 16 and data[25] in (2, 4, 6)  # truecolour, gray+alpha, truecolour+alpha
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) == 16 and len(bits) > 1
    return False


def _decode_16bit(data: bytes, gray: bool) -> tuple[np.ndarray, np.ndarray | None]:
    cv2 = _cv2()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
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
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
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


# ---------------------------------------------------------------------------------------------- model output
def to_output_pixels(sr: np.ndarray, gray: bool, bit_depth: int) -> np.ndarray:
    """Model output ``(3, H, W)`` float in ``[0, 1]`` -> ``(H, W, 1 | 3)`` uint8/uint16, rounded."""
    x = np.clip(np.asarray(sr, dtype=np.float32), 0.0, 1.0).transpose(1, 2, 0)
    if gray:
        x = (x @ _LUMA)[..., None]
    peak = 65535.0 if bit_depth == 16 else 255.0
    return np.round(x * peak).astype(np.uint16 if bit_depth == 16 else np.uint8)


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of an alpha plane to ``size = (width, height)``, keeping its dtype."""
    peak = 65535.0 if alpha.dtype == np.uint16 else 255.0
    plane = Image.fromarray(alpha.astype(np.float32) / peak, mode="F").resize(size, Image.BICUBIC)
    return np.round(np.clip(np.asarray(plane), 0.0, 1.0) * peak).astype(alpha.dtype)


# ---------------------------------------------------------------------------------------------- writing
def encode_image(
    color: np.ndarray,
    alpha: np.ndarray | None,
    fmt: str,
    quality: int = 95,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
) -> tuple[bytes, list[str]]:
    """Encode pixels as ``fmt`` (a key of :data:`OUTPUT_FORMATS`); returns ``(file bytes, notes)``.

    ``notes`` says what the format could not hold (alpha in JPEG, 16 bits outside PNG/TIFF, ...).
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"format={fmt!r} is not one of {sorted(OUTPUT_FORMATS)}")
    notes: list[str] = []
    if alpha is not None and fmt == "jpg":
        notes.append("alpha dropped: jpg has no alpha channel (use --format png, webp or tiff)")
        alpha = None
    if color.dtype == np.uint16 and fmt not in ("png", "tiff"):
        notes.append(f"16-bit reduced to 8 bits: {fmt} holds 8 bits (use --format png or tiff)")
        color = _to8(color)
        alpha = None if alpha is None else _to8(alpha)
    if color.dtype == np.uint16:
        return _encode_16bit(color, alpha, fmt, icc_profile, exif, notes), notes
    gray = color.shape[2] == 1
    if gray and fmt == "webp":
        notes.append("gray written as RGB: webp has no gray mode")
        color, gray = np.repeat(color, 3, axis=2), False
    planes = [color] if alpha is None else [color, alpha[..., None]]
    arr = np.ascontiguousarray(np.concatenate(planes, axis=2))
    mode = {(True, False): "L", (True, True): "LA", (False, False): "RGB", (False, True): "RGBA"}[
        (gray, alpha is not None)
    ]
    if mode == "LA" and fmt == "bmp":
        arr, mode = np.concatenate([np.repeat(color, 3, axis=2), alpha[..., None]], axis=2), "RGBA"
        notes.append("gray+alpha written as RGBA: bmp has no gray+alpha mode")
    im = Image.fromarray(arr if arr.shape[2] > 1 else arr[..., 0], mode)
    kwargs: dict = {}
    if fmt in ("jpg", "webp"):
        kwargs["quality"] = quality
    if fmt == "jpg":
        kwargs["subsampling"] = 0 if quality >= 90 else 2  # keep chroma detail at high quality
    if fmt != "bmp":
        if icc_profile:
            kwargs["icc_profile"] = icc_profile
        if exif:
            kwargs["exif"] = exif
    elif icc_profile or exif:
        notes.append("EXIF/ICC not kept: bmp cannot hold them")
    buf = io.BytesIO()
    im.save(buf, OUTPUT_FORMATS[fmt][1], **kwargs)
    return buf.getvalue(), notes


def _to8(a: np.ndarray) -> np.ndarray:
    return np.round(a.astype(np.float32) / 257.0).astype(np.uint8)


def _encode_16bit(
    color: np.ndarray,
    alpha: np.ndarray | None,
    fmt: str,
    icc: bytes | None,
    exif: bytes | None,
    notes: list[str],
) -> bytes:
    cv2 = _cv2()
    if color.shape[2] == 1 and alpha is not None:
        color = np.repeat(color, 3, axis=2)  # OpenCV writes 1, 3 or 4 channels: gray+alpha goes out as RGBA
        notes.append("16-bit gray+alpha written as RGBA (no 2-channel 16-bit writer)")
    bgr = color[..., ::-1] if color.shape[2] == 3 else color[..., 0]
    if alpha is not None:
        bgr = np.concatenate([bgr, alpha[..., None]], axis=2)
    ok, buf = cv2.imencode(".png" if fmt == "png" else ".tif", np.ascontiguousarray(bgr))
    if not ok:
        raise OSError(f"OpenCV could not encode a 16-bit {fmt} of shape {bgr.shape}")
    out = buf.tobytes()
    if fmt == "png":
        return _png_insert_chunks(out, icc, exif)
    if icc or exif:
        notes.append("EXIF/ICC not kept: 16-bit tiff is written without metadata (use --format png)")
    return out


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_add_text(png: bytes, text: dict[str, str]) -> bytes:
    """``png`` with one UTF-8 ``iTXt`` chunk per ``{keyword: text}`` after ``IHDR``; pixels untouched.

    Readers: ``PIL.Image.open(f).text[keyword]``, ``exiftool``, most image viewers' "properties"."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("png_add_text needs PNG file bytes")
    extra = b"".join(
        _png_chunk(b"iTXt", k.encode("latin-1") + b"\x00\x00\x00\x00\x00" + v.encode("utf-8"))
        for k, v in text.items()
    )
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + extra + png[end_of_ihdr:]


def _png_insert_chunks(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert ``iCCP`` and ``eXIf`` chunks right after ``IHDR`` (both must precede ``IDAT``)."""
    chunk = _png_chunk
    extra = b""
    if icc:
        extra += chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + extra + png[end_of_ihdr:]


def atomic_write(
    path: Path, data: bytes, before_rename: Callable[[os.stat_result], None] | None = None
) -> os.stat_result:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it over ``path``.

    ``before_rename(stat)`` runs after the bytes are on disk and before the rename, with the ``stat``
    the final file will have (a rename keeps size and mtime): the runner records the output in its
    manifest there, so an output on disk is always in the manifest. Returns that ``stat``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_TAG}{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        st = os.stat(tmp)
        if before_rename is not None:
            before_rename(st)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return st


def is_temp_file(name: str) -> bool:
    """True for the temporary files :func:`atomic_write` creates."""
    return name.startswith(".") and TEMP_TAG in name
