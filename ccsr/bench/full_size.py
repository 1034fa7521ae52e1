"""The full-size CCSR-v2 architecture (SD-2.1-base + CCSR ControlNet) with random weights.

For timing and memory measurements where the real weights are not at hand: same classes and
configurations as the release (docs/algorithm.md §2.1-2.2), so compute and memory match; outputs are noise.
"""

from __future__ import annotations

import os

import torch

SD21_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
)
SD21_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)
SD21_TEXT = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    vocab_size=49408,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)


def build_full_size_pipeline(
    tokenizer_dir: str | os.PathLike, torch_dtype: torch.dtype = torch.float32, seed: int = 0
):
    """A ``CCSRPipeline`` of the full-size architecture with random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ccsr.models.controlnet import build_latent_controlnet
    from ccsr.models.tiny import SD21_SCHEDULER, write_byte_tokenizer
    from ccsr.pipeline import CCSRPipeline

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD21_UNET)
    controlnet = build_latent_controlnet(unet=unet)
    vae = AutoencoderKL(**SD21_VAE)
    text = CLIPTextModel(CLIPTextConfig(**SD21_TEXT))
    write_byte_tokenizer(tokenizer_dir, max_length=77)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    pipe = CCSRPipeline(unet, controlnet, vae, text, tok, DDPMScheduler.from_config(SD21_SCHEDULER))
    for m in (unet, controlnet, vae, text):
        m.eval().requires_grad_(False)
    return pipe.to(dtype=torch_dtype) if torch_dtype != torch.float32 else pipe
