"""The authors' 8-bit post-processing and tile window, each written out here independently of ccsr's code.

What the authors' ``test_ccsr_tile.py`` + ``pipelines/pipeline_ccsr.py`` (CCSR-v2) do after the latents:
diffusers' ``VaeImageProcessor.postprocess`` (x255, rounded), StableSR's colour fix on that 8-bit image
read back as float (torch, CPU), torchvision ``ToPILImage`` (x255, truncated), PIL bicubic resize to
exactly scale x input. Their latent tiles are blended with ``gaussian_weights`` centred at ``(w - 1) / 2``
across and ``h / 2`` down.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ccsr.denoiser import denoise
from ccsr.diffusion import add_noise, predict_x0
from ccsr.models.shipped import TINY_MODEL_DIR
from ccsr.pipeline import DEFAULT_PROMPT, CCSRPipeline
from ccsr.tiling import gaussian_weights


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def shipped():
    return CCSRPipeline.from_pretrained(TINY_MODEL_DIR)


@pytest.fixture(scope="module")
def odd_photo():
    """A real 37x23 photograph crop (odd sizes: the canvas is stretched to multiples of 8)."""
    from skimage import data

    return Image.fromarray(np.ascontiguousarray(data.astronaut()[100:123, 180:217]))


# ------------------------------------------------------------------ the authors' steps, written out
def authors_canvas(lr: Image.Image, r: int, process_size: int) -> Image.Image:
    w0, h0 = lr.size
    img = lr
    if w0 < process_size // r or h0 < process_size // r:
        s = (process_size // r) / min(w0, h0)
        img = img.resize((round(s * w0), round(s * h0)))  # PIL's default for RGB: bicubic
    img = img.resize((img.size[0] * r, img.size[1] * r))
    return img.resize((img.size[0] // 8 * 8, img.size[1] // 8 * 8))


def to_tensor(im: Image.Image) -> torch.Tensor:  # torchvision ToTensor: uint8 -> float32 / 255
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255)[None]


def stablesr_adain(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    def mean_std(feat):
        b, c = feat.shape[:2]
        var = feat.view(b, c, -1).var(dim=2) + 1e-5
        return feat.view(b, c, -1).mean(dim=2).view(b, c, 1, 1), var.sqrt().view(b, c, 1, 1)

    s_mean, s_std = mean_std(source)
    t_mean, t_std = mean_std(target)
    return (target - t_mean) / t_std * s_std + s_mean


def stablesr_wavelet(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    def blur(image, radius):
        k = torch.tensor([[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]])
        image = F.pad(image, (radius,) * 4, mode="replicate")
        return F.conv2d(image, k[None, None].repeat(3, 1, 1, 1), groups=3, dilation=radius)

    def decompose(image):
        high = torch.zeros_like(image)
        for i in range(5):
            low = blur(image, 2**i)
            high += image - low
            image = low
        return high, low

    return decompose(target)[0] + decompose(source)[1]


def authors_8bit(decoded: torch.Tensor, canvas: Image.Image, color_fix: str, size: tuple) -> np.ndarray:
    """``decoded``: the VAE decoder's output in [-1, 1], ``(1, 3, H, W)``."""
    x = (decoded.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    image = Image.fromarray((x[0] * 255).round().astype("uint8"))  # diffusers numpy_to_pil
    if color_fix != "none":
        fix = stablesr_adain if color_fix == "adain" else stablesr_wavelet
        out = fix(to_tensor(image), to_tensor(canvas))[0].clamp_(0.0, 1.0)
        image = Image.fromarray((out.permute(1, 2, 0).numpy() * 255).astype(np.uint8))  # ToPILImage truncates
    return np.asarray(image.resize(size))  # always called; a no-op at the same size


CASES = [(2, 32), (4, 64), (2, 128)]  # 37x23 at x2, x4, and below the process size (enlarged, then shrunk)


@pytest.mark.parametrize("color_fix", ["adain", "wavelet", "none"])
def test_reference_postprocess_equals_the_authors_8bit_path_bit_for_bit(shipped, odd_photo, color_fix):
    for r, ps in CASES:
        # the canvas and the wavelet fix as the authors' (ccsr-tiny recommends border_pad 16, 3 levels)
        kw = dict(upscale=r, process_size=ps, color_fix=color_fix, border_pad=0, wavelet_levels=5)
        out = shipped(odd_photo, generator=gen(3), **kw).images[0]  # default: postprocess="reference"
        latents = shipped(odd_photo, generator=gen(3), output_type="latent", **kw).images
        with torch.no_grad():
            decoded = shipped.vae.decode(latents / shipped.vae.config.scaling_factor, return_dict=False)[0]
        size = (37 * r, 23 * r)
        expected = authors_8bit(decoded, authors_canvas(odd_photo, r, ps), color_fix, size)
        assert out.size == size
        np.testing.assert_array_equal(np.asarray(out), expected)
        pt = shipped(odd_photo, generator=gen(3), output_type="pt", **kw).images  # x255 gives the bytes back
        np.testing.assert_array_equal(
            (pt[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected
        )
        flt = shipped(odd_photo, generator=gen(3), postprocess="float", **kw).images[0]
        assert not np.array_equal(np.asarray(flt), expected)


def test_float_postprocess_is_the_float_path(shipped, odd_photo):
    """``postprocess="float"``: colour fix on the float decoder output, float resize, one rounding."""
    from ccsr.color import apply_color_fix
    from ccsr.image import make_canvas, pil_to_tensor, plan_resize, resize_float

    plan = plan_resize(odd_photo.size, 2, 32)
    canvas = pil_to_tensor(make_canvas(odd_photo, plan))
    for color_fix in ("adain", "wavelet", "none"):
        kw = dict(upscale=2, process_size=32, color_fix=color_fix, border_pad=0)  # the model's 3 levels
        out = shipped(odd_photo, generator=gen(4), postprocess="float", output_type="pt", **kw).images
        latents = shipped(odd_photo, generator=gen(4), output_type="latent", **kw).images
        with torch.no_grad():
            decoded = shipped._decode(latents)
        fixed = apply_color_fix(decoded, canvas, color_fix, shipped.default_wavelet_levels)
        expected = resize_float(fixed, plan.output_size).clamp(0, 1)
        assert torch.equal(out, expected)


# ------------------------------------------------------------------ tile window
def authors_gaussian(height: int, width: int) -> np.ndarray:
    """``gaussian_weights(tile_width, tile_height)`` of the authors' pipeline, generalised to h != w."""
    var = 0.01
    mx, my = (width - 1) / 2, height / 2
    xs = [
        np.exp(-(x - mx) * (x - mx) / (width * width) / (2 * var)) / np.sqrt(2 * np.pi * var)
        for x in range(width)
    ]
    ys = [
        np.exp(-(y - my) * (y - my) / (height * height) / (2 * var)) / np.sqrt(2 * np.pi * var)
        for y in range(height)
    ]
    return np.outer(ys, xs)


def test_tile_window_weights_for_a_non_square_tile():
    ref = gaussian_weights(6, 9, window="reference")
    assert ref.dtype == torch.float64 and ref.shape == (6, 9)
    np.testing.assert_array_equal(ref.numpy(), authors_gaussian(6, 9))
    # Centred across ((9 - 1) / 2 = 4, a mirror image), off-centre down (6 / 2 = 3: row 3 is the peak).
    assert torch.equal(ref, ref.flip(1)) and not torch.equal(ref, ref.flip(0))
    assert ref[:, 4].argmax() == 3 and ref[0, 4] < ref[5, 4]
    sym = gaussian_weights(6, 9, window="symmetric")
    assert torch.equal(sym, sym.flip(0)) and torch.equal(sym, sym.flip(1))
    with pytest.raises(ValueError, match="tile_window='centre'"):
        gaussian_weights(6, 9, window="centre")


def authors_windows(h: int, w: int, tile_h: int, tile_w: int, stride: int) -> list[tuple[int, int]]:
    ys = list(range(0, h - tile_h + 1, stride)) + ([h - tile_h] if (h - tile_h) % stride else [])
    xs = list(range(0, w - tile_w + 1, stride)) + ([w - tile_w] if (w - tile_w) % stride else [])
    return [(y, x) for y in ys for x in xs]


@pytest.mark.parametrize("tile_px,stride_px", [(64, 32), (160, 64)])  # square 32-latent tiles; 64x80 tiles
def test_reference_tiles_equal_a_hand_written_tile_loop(tiny_pipe, photo, tile_px, stride_px):
    p = tiny_pipe
    kw = dict(upscale=4, process_size=32, lr_latent="sample", output_type="latent")
    out = p(photo, 1, tile_size=tile_px, tile_stride=stride_px, generator=gen(6), **kw).images
    sym = p(
        photo, 1, tile_size=tile_px, tile_stride=stride_px, tile_window="symmetric", generator=gen(6), **kw
    )
    assert not torch.equal(out, sym.images)

    from ccsr.image import make_canvas, pil_to_tensor, plan_resize

    canvas = pil_to_tensor(make_canvas(photo, plan_resize(photo.size, 4, 32)))
    f = p.vae_scale_factor
    g = gen(6)
    shape = (1, 4, canvas.shape[2] // f, canvas.shape[3] // f)
    noise = randn_tensor(shape, generator=g, dtype=torch.float32)
    z = p.vae.encode(canvas * 2 - 1).latent_dist.sample(generator=g) * p.vae.config.scaling_factor
    ac = p.scheduler.alphas_cumprod
    x = add_noise(z, noise, 999, ac)
    emb = p.encode_prompt(DEFAULT_PROMPT)
    h, w = shape[2:]
    th, tw = min(tile_px // f, h), min(tile_px // f, w)
    weight = torch.from_numpy(authors_gaussian(th, tw))
    eps = torch.zeros(shape, dtype=torch.float32)
    count = torch.zeros(shape, dtype=torch.float32)
    windows = authors_windows(h, w, th, tw, stride_px // f)
    assert len(windows) > 1 and (tile_px < 160 or th != tw)
    for y, xx in windows:
        tile = denoise(
            p.unet, p.controlnet, x[..., y : y + th, xx : xx + tw], 999, emb, z[..., y : y + th, xx : xx + tw]
        )
        eps[..., y : y + th, xx : xx + tw] += tile.float() * weight  # float64 product, as theirs
        count[..., y : y + th, xx : xx + tw] += weight
    expected = predict_x0(x, eps / count, 999, ac, p.scheduler.config.prediction_type)
    assert torch.equal(out, expected)


# ------------------------------------------------------------------ model folders
def test_model_folder_recommends_postprocess_and_tile_window(tiny_single_dir, tmp_path, photo):
    from ccsr.models.loading import INFERENCE_DEFAULTS, recommended_settings, write_inference_defaults

    root = tmp_path / "model"
    shutil.copytree(tiny_single_dir, root)
    assert recommended_settings(root) == {
        "color_fix": "adain",
        "postprocess": "reference",
        "tile_window": "reference",
        "border_pad": 0,
        "wavelet_levels": 5,
    }
    write_inference_defaults(root, postprocess="float", tile_window="symmetric")
    pipe = CCSRPipeline.from_pretrained(root)
    assert pipe.inference_defaults == {
        "color_fix": "adain",
        "postprocess": "float",
        "tile_window": "symmetric",
        "border_pad": 0,
        "wavelet_levels": 5,
    }
    kw = dict(process_size=32, tile_size=64, tile_stride=32, output_type="pt")
    rec = pipe(photo, generator=gen(0), **kw).images
    assert torch.equal(
        rec, pipe(photo, generator=gen(0), postprocess="float", tile_window="symmetric", **kw).images
    )
    assert not torch.equal(rec, pipe(photo, generator=gen(0), postprocess="reference", **kw).images)
    pipe.save_pretrained(tmp_path / "saved")  # the recommendation travels with the model
    saved = json.loads((tmp_path / "saved" / INFERENCE_DEFAULTS).read_text())
    assert saved == {"postprocess": "float", "tile_window": "symmetric"}
    (root / INFERENCE_DEFAULTS).write_text('{"postprocess": "int"}')
    with pytest.raises(ValueError, match=r"inference_defaults.json: postprocess='int' is not one of"):
        CCSRPipeline.from_pretrained(root)
    with pytest.raises(ValueError, match="postprocess"):
        pipe(photo, process_size=32, postprocess="8bit")


def _edit(path, **changes) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_a_768px_v_prediction_base_is_refused_for_ccsr_v2_weights(tiny_model_dir, tmp_path):
    """CCSR-v2's ControlNet + VAE with stable-diffusion-2-1 (768 px, v) instead of -base: refused, naming
    both folders and the right base; v-prediction models trained with this package still load."""
    from ccsr.models.loading import load_components

    root = tmp_path / "release"
    shutil.copytree(tiny_model_dir, root)
    base = root / "stable-diffusion-2-1-base"
    _edit(base / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
    _edit(base / "unet" / "config.json", sample_size=96)  # SD-2.1 768-v's UNet config
    with pytest.raises(ValueError) as err:
        load_components(root)
    msg = str(err.value)
    assert str(base) in msg and str(root / "controlnet") in msg and str(root / "vae") in msg
    assert "768 px" in msg and "v_prediction" in msg and "stable-diffusion-2-1-base as the base" in msg

    # A ControlNet trained with this package on that base records it, and loads.
    _edit(root / "controlnet" / "config.json", prediction_type="v_prediction")
    assert load_components(root).scheduler.config.prediction_type == "v_prediction"
    # A recorded type is checked in both directions, at any size.
    _edit(base / "unet" / "config.json", sample_size=16)
    _edit(root / "controlnet" / "config.json", prediction_type="epsilon")
    with pytest.raises(ValueError, match="trained for the epsilon prediction type"):
        load_components(root)


def test_exports_record_the_prediction_type_and_ccsr_tiny_loads(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "saved")
    cfg = json.loads((tmp_path / "saved" / "controlnet" / "config.json").read_text())
    assert cfg["prediction_type"] == "epsilon" and cfg["use_vae_encode_condition"] is True
    from ccsr.models.loading import load_components

    assert (
        load_components(TINY_MODEL_DIR).scheduler.config.prediction_type == "v_prediction"
    )  # unmarked, small
