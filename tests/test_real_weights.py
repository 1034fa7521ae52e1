"""Checks with the official CCSR-v2 weights: run with CCSR_RUN_SLOW=1 CCSR_WEIGHTS=/path/to/preset/models.

The folder may be the official release layout or a single folder (see README, Weights).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_pipe():
    path = os.environ.get("CCSR_WEIGHTS")
    if not path:
        pytest.skip("set CCSR_WEIGHTS to the CCSR-v2 weights folder")
    from ccsr.pipeline import CCSRPipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    return CCSRPipeline.from_pretrained(path, torch_dtype=dtype).to(device)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.mark.parametrize("steps", [1, 2])
def test_official_weights_beat_bicubic_on_a_real_photo(real_pipe, steps):
    from skimage import data

    gt = Image.fromarray(data.astronaut()).resize((512, 512), Image.Resampling.BICUBIC)
    lr = gt.resize((128, 128), Image.Resampling.BICUBIC)
    out = real_pipe(lr, steps, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (512, 512)
    bicubic = lr.resize((512, 512), Image.Resampling.BICUBIC)
    # On bicubic-degraded input CCSR should be at least near bicubic in PSNR while adding detail.
    assert _psnr(np.asarray(out), np.asarray(gt)) > _psnr(np.asarray(bicubic), np.asarray(gt)) - 2.0
    lap = lambda im: np.abs(np.diff(np.asarray(im.convert("L"), dtype=np.float32), axis=0)).mean()  # noqa: E731
    assert lap(out) > lap(bicubic)
