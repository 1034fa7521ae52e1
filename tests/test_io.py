"""ccsr.io on real files on disk: formats, orientation, alpha, gray, 16-bit, metadata, bad files, atomic writes."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from helpers import png_header_only
from PIL import Image, ImageCms, ImageOps

from ccsr.atomic import atomic_write, is_temp_file
from ccsr.encode import encode_image, resize_alpha, to_output_pixels
from ccsr.io import ImageReadError, read_image


@pytest.fixture()
def rgb():
    """A real photo crop, 40x24 RGB uint8."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100:124, 180:220])


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation: int) -> Image.Exif:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = "CCSR-Test-Camera"  # Make
    ex.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"  # DateTimeOriginal, in the Exif sub-IFD
    return ex


@pytest.mark.parametrize("ext", [".png", ".webp", ".tif", ".bmp"])
def test_lossless_formats_read_exactly(tmp_path, rgb, ext):
    p = tmp_path / f"x{ext}"
    Image.fromarray(rgb).save(p, **({"lossless": True} if ext == ".webp" else {}))
    img = read_image(p)
    assert img.color.dtype == np.uint8 and img.color.shape == (24, 40, 3)
    np.testing.assert_array_equal(img.color, rgb)
    assert img.alpha is None and not img.gray and img.bit_depth == 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_and_is_reset(tmp_path, rgb, orientation):
    p = tmp_path / "o.jpg"
    Image.fromarray(rgb).save(p, exif=_exif(orientation).tobytes(), quality=95)
    img = read_image(p)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
    np.testing.assert_array_equal(img.color, expected)
    data, _ = encode_image(img.color, None, "png", exif=img.exif)
    back = Image.open(io.BytesIO(data)).getexif()
    assert back.get(0x0112) in (None, 1)
    assert back.get(0x010F) == "CCSR-Test-Camera"
    assert back.get_ifd(0x8769).get(0x9003) == "2024:01:02 03:04:05"


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_icc_and_exif_carried_over(tmp_path, rgb, fmt):
    icc = _srgb_icc()
    p = tmp_path / "in.jpg"
    Image.fromarray(rgb).save(p, icc_profile=icc, exif=_exif(1).tobytes())
    img = read_image(p)
    assert img.icc_profile == icc
    data, notes = encode_image(img.color, None, fmt, icc_profile=img.icc_profile, exif=img.exif)
    assert notes == []
    out = Image.open(io.BytesIO(data))
    assert out.info.get("icc_profile") == icc
    assert out.getexif().get(0x010F) == "CCSR-Test-Camera"


def test_rgba_alpha_split_resized_and_reattached(tmp_path, rgb):
    alpha = np.tile(np.linspace(0, 255, 40, dtype=np.float32), (24, 1)).round().astype(np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p)
    img = read_image(p)
    np.testing.assert_array_equal(img.color, rgb)
    np.testing.assert_array_equal(img.alpha, alpha)
    assert img.model_input().mode == "RGB"
    up = resize_alpha(img.alpha, (80, 48))
    assert up.shape == (48, 80) and up.dtype == np.uint8
    # a horizontal ramp stays a ramp: monotone along x, constant along y
    assert (np.diff(up[10].astype(int)) >= -1).all() and (up[:, 40] == up[0, 40]).all()
    color = to_output_pixels(np.zeros((3, 48, 80), np.float32) + 0.5, gray=False, bit_depth=8)
    out = Image.open(io.BytesIO(encode_image(color, up, "png")[0]))
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[..., 3], up)


def test_gray_8bit_in_gray_out(tmp_path, rgb):
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    p = tmp_path / "g.png"
    Image.fromarray(gray).save(p)
    img = read_image(p)
    assert img.gray and img.color.shape == (24, 40, 1)
    np.testing.assert_array_equal(np.asarray(img.model_input())[..., 1], gray)
    # gray out uses Pillow's luma weights: an RGB image of equal channels maps back to itself
    sr = np.repeat(gray[None].astype(np.float32) / 255.0, 3, axis=0)
    out = to_output_pixels(sr, gray=True, bit_depth=8)
    np.testing.assert_array_equal(out[..., 0], gray)
    assert Image.open(io.BytesIO(encode_image(out, None, "png")[0])).mode == "L"


def test_16bit_gray_rgb_rgba_round_trip(tmp_path):
    rs = np.random.RandomState(0)
    g16 = rs.randint(0, 65536, (20, 30), dtype=np.uint16)
    rgb16 = rs.randint(0, 65536, (20, 30, 3), dtype=np.uint16)
    a16 = rs.randint(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])
    cv2.imwrite(str(tmp_path / "rgb16.tif"), rgb16[..., ::-1])
    cv2.imwrite(str(tmp_path / "rgba16.png"), np.dstack([rgb16[..., ::-1], a16]))
    g = read_image(tmp_path / "g16.png")
    assert g.gray and g.bit_depth == 16
    np.testing.assert_array_equal(g.color[..., 0], g16)
    for name in ("rgb16.png", "rgb16.tif"):
        img = read_image(tmp_path / name)
        assert img.bit_depth == 16 and not img.gray
        np.testing.assert_array_equal(img.color, rgb16)  # not truncated to 8 bits as Pillow would
    rgba = read_image(tmp_path / "rgba16.png")
    np.testing.assert_array_equal(rgba.color, rgb16)
    np.testing.assert_array_equal(rgba.alpha, a16)
    np.testing.assert_array_equal(
        np.asarray(rgba.model_input()), np.round(rgb16.astype(np.float32) / 257).astype(np.uint8)
    )
    # 16-bit out, with the ICC profile and EXIF spliced into the PNG
    icc = _srgb_icc()
    data, notes = encode_image(rgba.color, rgba.alpha, "png", icc_profile=icc, exif=_exif(1).tobytes())
    assert notes == []
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back[..., 2::-1], rgb16)
    np.testing.assert_array_equal(back[..., 3], a16)
    pil = Image.open(io.BytesIO(data))
    assert pil.info["icc_profile"] == icc and pil.getexif().get(0x010F) == "CCSR-Test-Camera"
    gout, _ = encode_image(g.color, None, "tiff")
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(gout, np.uint8), cv2.IMREAD_UNCHANGED), g16)
    # float output -> 16 bits keeps more than 8 bits of precision
    ramp = np.linspace(0, 1, 30 * 20, dtype=np.float32).reshape(1, 20, 30).repeat(3, 0)
    assert len(np.unique(to_output_pixels(ramp, gray=False, bit_depth=16))) > 256


def test_palette_and_cmyk_are_converted(tmp_path, rgb):
    Image.fromarray(rgb).quantize(16).save(tmp_path / "p.png")
    pal_t = Image.fromarray(rgb).quantize(16)
    pal_t.info["transparency"] = 0
    pal_t.save(tmp_path / "pt.png", transparency=0)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    p = read_image(tmp_path / "p.png")
    assert p.color.shape == (24, 40, 3) and p.alpha is None
    np.testing.assert_array_equal(p.color, np.asarray(Image.open(tmp_path / "p.png").convert("RGB")))
    pt = read_image(tmp_path / "pt.png")
    assert pt.alpha is not None and set(np.unique(pt.alpha)) <= {0, 255} and 0 in pt.alpha
    c = read_image(tmp_path / "c.jpg")
    assert c.color.shape == (24, 40, 3) and c.icc_profile is None
    assert np.abs(c.color.astype(int) - rgb.astype(int)).mean() < 8  # CMYK JPEG round trip, roughly the photo


def test_bad_files_each_give_one_clear_reason(tmp_path, rgb):
    good = io.BytesIO()
    Image.fromarray(rgb).save(good, "PNG")
    jpg = io.BytesIO()
    Image.fromarray(rgb).save(jpg, "JPEG")
    cases = {
        "empty.png": (b"", "empty file"),
        "text.jpg": (b"hello, I am not an image\n" * 10, "not an image"),
        "trunc.png": (good.getvalue()[: len(good.getvalue()) // 2], "truncated"),
        "trunc.jpg": (jpg.getvalue()[: len(jpg.getvalue()) // 2], "truncated"),
        "bomb.png": (png_header_only(100_000, 100_000), "decompression-bomb"),
        "tiny.png": (None, "too small"),
    }
    for name, (content, _) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    Image.fromarray(rgb[:4, :6]).save(tmp_path / "tiny.png")
    os.symlink(tmp_path / "missing.png", tmp_path / "link.png")
    cases["link.png"] = (None, "broken symbolic link")
    (tmp_path / "dir.png").mkdir()
    cases["dir.png"] = (None, "not a regular file")
    for name, (_, reason) in cases.items():
        with pytest.raises(ImageReadError, match=reason) as e:
            read_image(tmp_path / name)
        assert "\n" not in str(e.value)
    with pytest.raises(ImageReadError, match="--max-pixels"):
        read_image(tmp_path / "bomb.png", max_pixels=10_000)


def test_encode_notes_say_what_a_format_cannot_hold(rgb):
    alpha = np.full(rgb.shape[:2], 128, np.uint8)
    data, notes = encode_image(rgb, alpha, "jpg")
    assert Image.open(io.BytesIO(data)).mode == "RGB" and any("alpha dropped" in n for n in notes)
    c16 = rgb.astype(np.uint16) * 257
    data, notes = encode_image(c16, None, "webp")
    assert any("16-bit reduced" in n for n in notes)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).shape, rgb.shape)
    with pytest.raises(ValueError, match="format"):
        encode_image(rgb, None, "gif")


def test_atomic_write_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "sub" / "out.png"
    seen = {}

    def before(st):
        seen["exists_yet"] = target.exists()
        seen["size"] = st.st_size

    st = atomic_write(target, b"new content", before)
    assert target.read_bytes() == b"new content" and seen == {"exists_yet": False, "size": 11}
    assert st.st_mtime_ns == target.stat().st_mtime_ns

    def boom(st):
        raise RuntimeError("manifest could not be written")

    with pytest.raises(RuntimeError):
        atomic_write(target, b"other", boom)
    assert target.read_bytes() == b"new content"  # old file kept whole
    assert [p.name for p in target.parent.iterdir()] == ["out.png"]  # no temp file left behind
    assert is_temp_file(".out.png.ccsr-tmp-12-34") and not is_temp_file("out.png")


def test_metadata_an_encoder_refuses_is_dropped_step_by_step(rgb):
    exif = _exif(1)
    exif[0x010E] = "x" * 70_000  # over JPEG's 64 KB EXIF segment
    icc = _srgb_icc()
    data, notes = encode_image(rgb, None, "jpg", icc_profile=icc, exif=exif.tobytes())
    out = Image.open(io.BytesIO(data))
    assert out.info["icc_profile"] == icc and dict(out.getexif()) == {0x0112: 1}
    assert notes == [
        "EXIF reduced to its orientation tag: the jpg encoder refused the metadata "
        "(ValueError: EXIF data is too long); the image was written"
    ]
    huge_icc = icc + b"\0" * (256 * 65519)  # more than the 255 APP2 segments a JPEG can hold
    data, notes = encode_image(rgb, None, "jpg", icc_profile=huge_icc, exif=_exif(1).tobytes())
    out = Image.open(io.BytesIO(data))
    assert out.info.get("icc_profile") is None and out.getexif().get(0x010F) == "CCSR-Test-Camera"
    assert len(notes) == 1 and notes[0].startswith("ICC profile dropped") and "over JPEG's" in notes[0]
    assert out.size == (40, 24)  # the pixels are always written
