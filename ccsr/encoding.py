"""One home for what goes into the networks and what comes out of the VAE, shared by the pipeline and every
training stage: prompt embeddings, the scaled VAE latent of an image, and its decoding back to pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ccsr.denoiser import module_dtype

GeneratorArg = torch.Generator | list[torch.Generator] | None


def vae_scale_factor(vae) -> int:
    """Pixels per latent pixel: 2 per down-sampling block (8 for SD's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: str | Sequence[str], device=None) -> torch.Tensor:
    """The text encoder's last hidden state ``(P, L, D)``, tokens padded to the tokenizer's length with
    truncation and no attention mask, as the authors' code (docs/algorithm.md §1.4)."""
    ids = tokenizer(
        [prompts] if isinstance(prompts, str) else list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(device if device is not None else text_encoder.device))[0]


@torch.no_grad()
def encode_image(
    vae, image01: torch.Tensor, generator: GeneratorArg = None, mode: str = "sample"
) -> torch.Tensor:
    """Scaled latent ``s * E(2 x - 1)`` as float32 ``(B, C, H/f, W/f)`` for ``image01`` ``(B, 3, H, W)`` in
    ``[0, 1]``: a posterior sample from ``generator`` (the authors'), or its ``"mode"`` (deterministic)."""
    dist = vae.encode((image01 * 2 - 1).to(module_dtype(vae))).latent_dist
    z = dist.sample(generator=generator) if mode == "sample" else dist.mode()
    return z.float() * vae.config.scaling_factor


def decode_latent(vae, latents: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
    """Scaled latents -> float32 images in about ``[-1, 1]``; a half-precision decode that overflows is redone
    in float32 (the VAE's weights are cast back afterwards). Without gradients unless ``differentiable``
    (a loss on the decoded image that trains what made the latents)."""
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        return _decode(vae, latents)


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    z = latents / vae.config.scaling_factor
    img = vae.decode(z.to(module_dtype(vae)), return_dict=False)[0]
    if module_dtype(vae) != torch.float32 and not torch.isfinite(img).all():
        dtype = module_dtype(vae)
        vae.to(torch.float32)
        try:
            img = vae.decode(z.float(), return_dict=False)[0]
        finally:
            vae.to(dtype)
    return img.float()
