"""Small randomly initialised CCSR components in the real classes, for tests, benchmarks and ccsr-tiny.

Everything is built offline: the tokenizer is a byte-level CLIP BPE vocabulary written locally
(no merges), so any prompt tokenizes without a Hub download.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ccsr.quiet import quiet_loading

SD21_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "timestep_spacing": "leading",
    "variance_type": "fixed_small",
}


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a small CCSR model (defaults: the unit-test size, a few hundred kB)."""

    unet_channels: tuple[int, ...] = (8, 16)
    unet_layers: int = 1
    head_dim: int = 2
    text_dim: int = 16
    text_layers: int = 1
    vae_channels: tuple[int, ...] = (8, 16)
    latent_channels: int = 4
    norm_groups: int = 4
    max_length: int = 16
    # Added for ccsr-tiny (configs/tiny/arch.yaml); the defaults keep the unit-test model unchanged.
    # Per UNet level: a cross-attention block or a plain one; None: SD's pattern (all but the last).
    unet_attention: tuple[bool, ...] | None = None
    vae_layers: int = 1  # resnets per VAE level (the decoder has one more, as in diffusers)
    vae_norm_groups: int | None = None  # None: norm_groups
    vae_mid_attention: bool = True  # self-attention in the VAE's lowest level (SD has it)
    text_heads: int = 2
    scaling_factor: float = 0.18215  # SD's; a trained VAE stores 1 / std of its latents
    prediction_type: str = "epsilon"  # SD-2.1-base's; ccsr-tiny: v_prediction (ccsr.diffusion.predict_x0)


def _byte_symbols() -> list[str]:
    """GPT-2 / CLIP's reversible map of the 256 byte values to printable unicode characters."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_byte_tokenizer(folder: str | os.PathLike, max_length: int = 16) -> Path:
    """A CLIPTokenizer vocabulary of the 256 byte symbols (plain and word-final) and the specials."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(folder)
    return folder


def build_tiny_components(
    spec: TinySpec = TinySpec(), seed: int = 0, tokenizer_dir: str | os.PathLike | None = None
):
    """Random ``(unet, controlnet, vae, text_encoder, tokenizer, scheduler)`` of the real classes."""
    import tempfile

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ccsr.diffusion import check_prediction_type
    from ccsr.models.controlnet import build_latent_controlnet

    torch.manual_seed(seed)
    n = len(spec.unet_channels)
    attn = spec.unet_attention if spec.unet_attention is not None else (True,) * (n - 1) + (False,)
    if len(attn) != n:
        raise ValueError(f"unet_attention has {len(attn)} entries for {n} unet_channels levels")
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        block_out_channels=spec.unet_channels,
        layers_per_block=spec.unet_layers,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        cross_attention_dim=spec.text_dim,
        attention_head_dim=spec.head_dim,
        norm_num_groups=spec.norm_groups,
        use_linear_projection=True,
    )
    controlnet = build_latent_controlnet(unet=unet)
    m = len(spec.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=spec.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * m,
        up_block_types=("UpDecoderBlock2D",) * m,
        latent_channels=spec.latent_channels,
        norm_num_groups=spec.vae_norm_groups or spec.norm_groups,
        layers_per_block=spec.vae_layers,
        sample_size=64,
        scaling_factor=spec.scaling_factor,
        mid_block_add_attention=spec.vae_mid_attention,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=spec.text_dim,
            intermediate_size=spec.text_dim * 2,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            vocab_size=514,
            max_position_embeddings=spec.max_length,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    if tokenizer_dir is None:
        tokenizer_dir = tempfile.mkdtemp(prefix="ccsr-tok-")
    if not (Path(tokenizer_dir) / "tokenizer_config.json").is_file():
        write_byte_tokenizer(tokenizer_dir, spec.max_length)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    scheduler = DDPMScheduler.from_config(
        {**SD21_SCHEDULER, "prediction_type": check_prediction_type(spec.prediction_type)}
    )
    for mod in (unet, controlnet, vae, text_encoder):
        mod.eval().requires_grad_(False)
    return unet, controlnet, vae, text_encoder, tokenizer, scheduler


def save_release_layout(
    components, root: str | os.PathLike, layout: str = "official", record_prediction: bool = False
) -> Path:
    """Write components as the official release (``stable-diffusion-2-1-base/`` + ``controlnet/`` + ``vae/``)
    or as one folder (``layout="single"``). ``record_prediction``: write the scheduler's prediction type
    into the ControlNet's ``config.json`` (as trained releases do; the authors' release has none)."""
    from ccsr.models.controlnet import save_ccsr_controlnet

    unet, controlnet, vae, text_encoder, tokenizer, scheduler = components
    root = Path(root)
    base = root / "stable-diffusion-2-1-base" if layout == "official" else root
    if layout not in ("official", "single"):
        raise ValueError(f"layout={layout!r} must be 'official' or 'single'")
    unet.save_pretrained(base / "unet")
    with quiet_loading():
        text_encoder.save_pretrained(base / "text_encoder")
    tokenizer.save_pretrained(base / "tokenizer")
    scheduler.save_pretrained(base / "scheduler")
    if layout == "official":
        # SD's own VAE sits beside the base model; CCSR's fine-tuned one at the root.
        vae.save_pretrained(base / "vae")
    vae.save_pretrained(root / "vae")
    kind = scheduler.config.prediction_type if record_prediction else None
    save_ccsr_controlnet(controlnet, root / "controlnet", kind)
    return root
