"""The CCSR denoiser: UNet(x_t, t, text, residuals = ControlNet(x_t, t, text, z_lr)).

One function shared by the pipeline and both training stages (docs/algorithm.md §1.8). Its output is what the
scheduler's ``prediction_type`` says (epsilon for SD-2.1-base and the official weights, v for
ccsr-tiny); :func:`ccsr.diffusion.predict_x0` reads it.
"""

from __future__ import annotations

import torch


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
    dtype = unet.dtype
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
