"""Turning model output into file bytes for ``ccsr upscale``: quantise, re-attach alpha, encode, carry
metadata over.

* gray stays gray and 16-bit stays 16-bit where the format holds it (PNG and TIFF; 16-bit gray+alpha
  PNG is written by :func:`png16` since neither Pillow nor OpenCV writes 2-channel 16-bit PNG);
* EXIF and ICC profile are written back where the format can hold them;
* **metadata never costs an output**: when the encoder refuses the metadata (EXIF over JPEG's 64 KB
  segment limit, an ICC profile over JPEG's 255 segments, a block a writer cannot take), the image is
  written with less of it, trying in this order: EXIF reduced to its orientation tag (already 1), no
  ICC profile, no EXIF, neither but the orientation, no metadata at all; what was dropped and why is
  returned as a note for the log and ``run.json``.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from ccsr.io import OUTPUT_FORMATS, _cv2

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's convert("L")
_EXIF_ORIENTATION = 0x0112
_JPEG_MAX_ICC = 255 * 65519  # 255 APP2 segments of 65519 profile bytes each


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
    plane = Image.fromarray(alpha.astype(np.float32) / peak, mode="F").resize(size, Image.Resampling.BICUBIC)
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

    ``notes`` says what the format could not hold (alpha in JPEG, 16 bits outside PNG/TIFF, metadata
    the encoder refused, ...). Metadata is dropped step by step until the encoder accepts it (module
    docstring); errors that have nothing to do with metadata are raised.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"format={fmt!r} is not one of {sorted(OUTPUT_FORMATS)}")
    notes: list[str] = []
    color, alpha, icc_profile, exif = _what_format_holds(color, alpha, fmt, icc_profile, exif, notes)
    if color.dtype == np.uint16:
        if fmt == "tiff" and (icc_profile or exif):
            notes.append("EXIF/ICC not kept: 16-bit tiff is written without metadata (use --format png)")
            icc_profile = exif = None
        return with_metadata_fallback(
            lambda icc, ex: _encode_16bit(color, alpha, fmt, icc, ex, notes), icc_profile, exif, fmt, notes
        )
    im = _to_pil(color, alpha, fmt, notes)
    kwargs = _quality_options(fmt, quality)

    def save(icc: bytes | None, ex: bytes | None) -> bytes:
        if fmt == "jpg" and icc and len(icc) > _JPEG_MAX_ICC:  # Pillow would write a profile no reader takes
            raise ValueError(f"ICC profile of {len(icc)} bytes is over JPEG's {_JPEG_MAX_ICC} bytes")
        buf = io.BytesIO()
        meta = {k: v for k, v in (("icc_profile", icc), ("exif", ex)) if v}
        im.save(buf, OUTPUT_FORMATS[fmt][1], **kwargs, **meta)
        return buf.getvalue()

    return with_metadata_fallback(save, icc_profile, exif, fmt, notes)


def _what_format_holds(
    color: np.ndarray,
    alpha: np.ndarray | None,
    fmt: str,
    icc_profile: bytes | None,
    exif: bytes | None,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray | None, bytes | None, bytes | None]:
    """``(color, alpha, icc_profile, exif)`` less what ``fmt`` cannot hold (alpha in JPEG, 16 bits outside
    PNG/TIFF, metadata in BMP); each loss is appended to ``notes``."""
    if alpha is not None and fmt == "jpg":
        notes.append("alpha dropped: jpg has no alpha channel (use --format png, webp or tiff)")
        alpha = None
    if color.dtype == np.uint16 and fmt not in ("png", "tiff"):
        notes.append(f"16-bit reduced to 8 bits: {fmt} holds 8 bits (use --format png or tiff)")
        color = _to8(color)
        alpha = None if alpha is None else _to8(alpha)
    if fmt == "bmp" and (icc_profile or exif):
        notes.append("EXIF/ICC not kept: bmp cannot hold them")
        icc_profile = exif = None
    return color, alpha, icc_profile, exif


def _quality_options(fmt: str, quality: int) -> dict[str, int]:
    """Pillow's save options for the lossy formats (JPEG, WebP); none for the others."""
    kwargs = {}
    if fmt in ("jpg", "webp"):
        kwargs["quality"] = quality
    if fmt == "jpg":
        kwargs["subsampling"] = 0 if quality >= 90 else 2  # keep chroma detail at high quality
    return kwargs


def with_metadata_fallback(save, icc: bytes | None, exif: bytes | None, fmt: str, notes: list[str]):
    """``(save(icc, exif), notes)``, dropping metadata step by step while ``save`` refuses it.

    Once a save without any metadata fails too, that error is raised: the pixels were the problem."""
    small = _orientation_only(exif)
    candidates = [
        (icc, exif, None),
        (icc, small, "EXIF reduced to its orientation tag"),
        (None, exif, "ICC profile dropped"),
        (icc, None, "EXIF dropped"),
        (None, small, "ICC profile dropped, EXIF reduced to its orientation tag"),
        (None, None, "metadata dropped"),
    ]
    tries, seen = [], set()
    for i, e, lost in candidates:
        if (i, e) not in seen:
            seen.add((i, e))
            tries.append((i, e, lost))
    first_error: Exception | None = None
    for k, (i, e, lost) in enumerate(tries):
        try:
            data = save(i, e)
        except Exception as err:  # any encoder complaint: retry with less metadata
            if k == len(tries) - 1:
                raise
            first_error = first_error or err
            continue
        if lost is not None:
            why = f"{type(first_error).__name__}: {first_error}".strip().splitlines()[0]
            notes.append(f"{lost}: the {fmt} encoder refused the metadata ({why}); the image was written")
        return data, notes
    raise AssertionError("unreachable")  # pragma: no cover


def _orientation_only(exif: bytes | None) -> bytes | None:
    """A minimal EXIF block that keeps the orientation tag (1 after :func:`ccsr.io.read_image`)."""
    if not exif:
        return None
    try:
        full = Image.Exif()
        full.load(exif)
        small = Image.Exif()
        small[_EXIF_ORIENTATION] = int(full.get(_EXIF_ORIENTATION, 1) or 1)
        return small.tobytes()
    except Exception:  # unreadable EXIF: nothing worth keeping
        return None


def _to_pil(color: np.ndarray, alpha: np.ndarray | None, fmt: str, notes: list[str]) -> Image.Image:
    gray = color.shape[2] == 1
    if gray and fmt == "webp":
        notes.append("gray written as RGB: webp has no gray mode")
        color, gray = np.repeat(color, 3, axis=2), False
    planes = [color] if alpha is None else [color, alpha[..., None]]
    arr = np.ascontiguousarray(np.concatenate(planes, axis=2))
    mode = {(True, False): "L", (True, True): "LA", (False, False): "RGB", (False, True): "RGBA"}[
        (gray, alpha is not None)
    ]
    if alpha is not None and mode == "LA" and fmt == "bmp":
        arr, mode = np.concatenate([np.repeat(color, 3, axis=2), alpha[..., None]], axis=2), "RGBA"
        notes.append("gray+alpha written as RGBA: bmp has no gray+alpha mode")
    return Image.fromarray(arr if arr.shape[2] > 1 else arr[..., 0], mode)


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
    gray_alpha = color.shape[2] == 1 and alpha is not None
    if alpha is not None and gray_alpha and fmt == "png":
        return png_insert_chunks(png16(np.concatenate([color, alpha[..., None]], axis=2)), icc, exif)
    cv2 = _cv2()
    if gray_alpha:
        color = np.repeat(color, 3, axis=2)  # OpenCV writes 1, 3 or 4 channels: gray+alpha goes out as RGBA
        note = "16-bit gray+alpha tiff written as RGBA (no 2-channel 16-bit tiff writer; use --format png)"
        if note not in notes:
            notes.append(note)
    bgr = color[..., ::-1] if color.shape[2] == 3 else color[..., 0]
    if alpha is not None:
        bgr = np.concatenate([bgr, alpha[..., None]], axis=2)
    ok, buf = cv2.imencode(".png" if fmt == "png" else ".tif", np.ascontiguousarray(bgr))
    if not ok:
        raise OSError(f"OpenCV could not encode a 16-bit {fmt} of shape {bgr.shape}")
    out = buf.tobytes()
    return png_insert_chunks(out, icc, exif) if fmt == "png" else out


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG of ``(H, W, C)`` uint16 pixels, C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA."""
    h, w, c = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.ascontiguousarray(arr.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1)  # filter type 0 on each row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def png_add_text(png: bytes, text: dict[str, str]) -> bytes:
    """``png`` with one UTF-8 ``iTXt`` chunk per ``{keyword: text}`` after ``IHDR``; pixels untouched.

    Readers: ``PIL.Image.open(f).text[keyword]``, ``exiftool``, most image viewers' "properties"."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("png_add_text needs PNG file bytes")
    extra = b"".join(
        _chunk(b"iTXt", k.encode("latin-1") + b"\x00\x00\x00\x00\x00" + v.encode("utf-8"))
        for k, v in text.items()
    )
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + extra + png[end_of_ihdr:]


def png_insert_chunks(png: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert ``iCCP`` and ``eXIf`` chunks right after ``IHDR`` (both must precede ``IDAT``)."""
    extra = b""
    if icc:
        extra += _chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += _chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + extra + png[end_of_ihdr:]
