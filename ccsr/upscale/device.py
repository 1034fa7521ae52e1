"""The device of a folder run and its pipeline: one process alone or one of ``accelerate launch``'s."""

from __future__ import annotations

from ccsr.models.shipped import resolve_model_root
from ccsr.upscale.config import UpscaleConfig
from ccsr.upscale.discovery import InputError


def init_state(requested: str):
    """``(accelerate PartialState, torch.device)``: under ``accelerate launch`` each process gets its own
    GPU (or, on CPU, a gloo process group); alone, ``auto`` picks CUDA, then MPS, then CPU."""
    import torch
    from accelerate import PartialState

    if requested == "auto":
        state = PartialState(cpu=not torch.cuda.is_available())
        device = state.device
        if device.type == "cpu" and state.num_processes == 1 and torch.backends.mps.is_available():
            device = torch.device("mps")
    else:
        try:
            device = torch.device(requested)
        except RuntimeError as e:
            raise InputError(
                f"--device {requested!r} is not a device torch knows ({e}); try cpu, cuda, cuda:1, mps"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {requested} but torch sees no CUDA device here; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise InputError(f"--device {requested} but MPS is not available here; use --device cpu")
        state = PartialState(cpu=device.type != "cuda")
        if device.type == "cuda" and device.index is None:
            device = state.device
    if device.type == "cpu":
        device = torch.device("cpu")
    return state, device


def load_pipeline(cfg: UpscaleConfig):
    """The pipeline :func:`run_upscale` loads for ``cfg`` (model, device, precision, speed options)."""
    _, device = init_state(cfg.device)
    return load_pipeline_on(cfg, device, cfg.resolved_precision(device.type))


def load_pipeline_on(cfg: UpscaleConfig, device, dtype_name: str):
    """``cfg``'s model as a :class:`~ccsr.pipeline.CCSRPipeline` on ``device`` in ``dtype_name`` precision."""
    import torch
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    from ccsr.pipeline import CCSRPipeline

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    pipe = CCSRPipeline.from_pretrained(
        resolve_model_root(cfg.model),
        base=cfg.base,
        controlnet=cfg.controlnet,
        vae=cfg.vae,
        torch_dtype=dtype,
        allow_pickle=cfg.allow_pickle,
    )
    return pipe.to(device).optimize(channels_last=cfg.channels_last, compile=cfg.compile)
