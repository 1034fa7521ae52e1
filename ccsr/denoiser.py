"""The CCSR denoiser: UNet(x_t, t, text, residuals = ControlNet(x_t, t, text, z_lr)).

One function shared by the pipeline and both training stages (docs/algorithm.md §1.8). Its output is what the
scheduler's ``prediction_type`` says (epsilon for SD-2.1-base and the official weights, v for
ccsr-tiny); :func:`ccsr.diffusion.predict_x0` reads it.
"""

from __future__ import annotations

import weakref

import torch

_DTYPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """``module.dtype``, remembered while the module's first parameter keeps its dtype: diffusers' property
    walks every submodule looking for casting hooks at each access (1.7 ms for the full-size UNet on a
    2-core CPU, several times per pipeline call). Enabling layerwise casting changes the parameters'
    dtype, so the answer is then looked up again."""
    first = next(module.parameters()).dtype
    hit = _DTYPES.get(module)
    if hit is None or hit[0] != first:
        hit = (first, module.dtype)
        _DTYPES[module] = hit
    return hit[1]  # type: ignore[return-value]


def denoise(
    unet,
    controlnet,
    x_t: torch.Tensor,
    timesteps: torch.Tensor | int,
    text_embeddings: torch.Tensor,
    lr_latent: torch.Tensor,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """The denoiser's output for ``x_t`` ``(B, C, h, w)`` conditioned on the LR latent ``(B, C, h, w)``:
    epsilon, v or x0, as the scheduler's ``prediction_type`` says.

    ``text_embeddings`` is ``(B, L, D)`` (or ``(1, L, D)``, broadcast). Networks run in their own
    dtype; the result is returned in that dtype.
    """
    dtype = module_dtype(unet)
    b = x_t.shape[0]
    t = torch.as_tensor(timesteps, device=x_t.device)
    if t.ndim == 0:
        t = t.expand(b)
    emb = text_embeddings.to(dtype)
    if emb.shape[0] == 1 and b > 1:
        emb = emb.expand(b, -1, -1)
    sample = x_t.to(dtype)
    # Not `controlnet.dtype`: in training the ControlNet is wrapped (DDP), and wrappers lack that attribute.
    cn_dtype = next(controlnet.parameters()).dtype
    down, mid = controlnet(
        sample,
        t,
        encoder_hidden_states=emb.to(cn_dtype),
        controlnet_cond=lr_latent.to(cn_dtype),
        conditioning_scale=conditioning_scale,
        return_dict=False,
    )
    return unet(
        sample,
        t,
        encoder_hidden_states=emb,
        down_block_additional_residuals=[d.to(dtype) for d in down],
        mid_block_additional_residual=mid.to(dtype),
        return_dict=False,
    )[0]
