"""Shared fixtures: tiny random CCSR models of the real classes, saved in the real folder layouts."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread: the tiny models gain nothing from more, and the suite's subprocesses
# (accelerate ranks, CLI runs) would otherwise oversubscribe a 2-core machine badly.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CCSR_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set CCSR_RUN_SLOW=1 (needs real weights or a GPU)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    """``(unet, controlnet, vae, text_encoder, tokenizer, scheduler)``, random, seed 0."""
    from ccsr.models.tiny import build_tiny_components

    return build_tiny_components(tokenizer_dir=tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_components, tmp_path_factory):
    """A folder in the official release layout: stable-diffusion-2-1-base/ + controlnet/ + vae/."""
    from ccsr.models.tiny import save_release_layout

    return save_release_layout(tiny_components, tmp_path_factory.mktemp("official"), layout="official")


@pytest.fixture(scope="session")
def tiny_single_dir(tiny_components, tmp_path_factory):
    """The same model as one folder: unet/ vae/ controlnet/ text_encoder/ tokenizer/ scheduler/."""
    from ccsr.models.tiny import save_release_layout

    return save_release_layout(tiny_components, tmp_path_factory.mktemp("single"), layout="single")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    from ccsr.pipeline import CCSRPipeline

    return CCSRPipeline.from_pretrained(tiny_model_dir)


@pytest.fixture()
def common(tiny_model_dir):
    """Fast ``ccsr upscale`` settings: x2, process size 32 (16 px inputs stay 16 px), the tiny model."""
    return ["--model", str(tiny_model_dir), "--scale", "2", "--process-size", "32"]


@pytest.fixture()
def photo():
    """A real 48x32 RGB photograph crop (scikit-image's astronaut), as a PIL image."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()[100:164:2, 180:276:2])
