"""The CCSR ControlNet: a stock diffusers ``ControlNetModel`` whose hint encoder is one 3x3 conv.

CCSR-v2 (docs/algorithm.md §2.2) conditions the ControlNet on the VAE latent of the bicubic-upsampled LR image:
``h = conv_in(x_t) + condition_conv_in(z_lr)``. Stock diffusers computes
``sample + controlnet_cond_embedding(controlnet_cond)``, so swapping ``controlnet_cond_embedding``
for :class:`LatentConditionEmbedding` and passing ``z_lr`` as ``controlnet_cond`` gives exactly the
reference model without copying any diffusers code.

On disk we keep the authors' format (``use_vae_encode_condition: true`` in ``config.json``, weights
``condition_conv_in.*``), so released weights load and our exports load in the reference code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ccsr.atomic import atomic_path, write_text

#: Key of the reference's config flag, and its weight-name prefix on disk vs in memory.
VAE_CONDITION_KEY = "use_vae_encode_condition"
DISK_PREFIX = "condition_conv_in."
MEMORY_PREFIX = "controlnet_cond_embedding.conv."
#: Key this package adds to ``config.json``: the prediction type the ControlNet was trained for (the
#: scheduler's). The authors' release has none: it was trained on SD-2.1-base, epsilon prediction.
PREDICTION_KEY = "prediction_type"
_NOT_DIFFUSERS = (VAE_CONDITION_KEY, PREDICTION_KEY)  # config keys stock ControlNetModel does not take
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS_NAME = "diffusion_pytorch_model.bin"


class LatentConditionEmbedding(nn.Module):
    """``Conv2d(latent_channels, out_channels, 3, padding=1)``: the reference's ``condition_conv_in``.

    Default PyTorch initialisation, as the reference (not zero-initialised, not copied from the UNet).
    """

    def __init__(self, latent_channels: int = 4, out_channels: int = 320) -> None:
        super().__init__()
        self.conv = nn.Conv2d(latent_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(z)


def _swap_embedding(controlnet):
    cfg = controlnet.config
    controlnet.controlnet_cond_embedding = LatentConditionEmbedding(
        cfg.in_channels, cfg.block_out_channels[0]
    )
    return controlnet


def build_latent_controlnet(unet=None, config: dict | None = None):
    """A CCSR ControlNet, either copying ``unet``'s encoder (stage-1 init) or from a ``config`` dict."""
    from diffusers import ControlNetModel

    if (unet is None) == (config is None):
        raise ValueError("pass exactly one of unet= or config=")
    if unet is not None:
        # conditioning_embedding_out_channels only shapes the pixel hint encoder we replace.
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=True)
        with torch.device(unet.device):
            controlnet = _swap_embedding(controlnet)
        return controlnet if unet.dtype == torch.float32 else controlnet.to(unet.dtype)
    assert config is not None  # exactly one of the two, checked above
    cfg = {k: v for k, v in config.items() if k not in _NOT_DIFFUSERS and not k.startswith("_")}
    return _swap_embedding(ControlNetModel.from_config(cfg))


def is_latent_controlnet(model) -> bool:
    return isinstance(getattr(model, "controlnet_cond_embedding", None), LatentConditionEmbedding)


def to_disk_name(key: str) -> str:
    """An in-memory parameter name -> the reference's (``condition_conv_in.*``)."""
    return DISK_PREFIX + key[len(MEMORY_PREFIX) :] if key.startswith(MEMORY_PREFIX) else key


def to_disk_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """In-memory names -> the reference's names (``condition_conv_in.*``)."""
    return {to_disk_name(k): v for k, v in state_dict.items()}


def from_disk_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's names -> in-memory names."""
    return {
        (MEMORY_PREFIX + k[len(DISK_PREFIX) :] if k.startswith(DISK_PREFIX) else k): v
        for k, v in state_dict.items()
    }


def save_ccsr_controlnet(controlnet, folder: str | os.PathLike, prediction_type: str | None = None) -> Path:
    """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` in the authors' format.

    ``prediction_type``: what the ControlNet was trained for, recorded as ``config.json``'s
    :data:`PREDICTION_KEY` so that the loader can refuse a base model of another kind."""
    import diffusers
    from safetensors.torch import save_file

    if not is_latent_controlnet(controlnet):
        raise ValueError("save_ccsr_controlnet expects a CCSR (latent-conditioned) ControlNet")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "ControlNetModel", "_diffusers_version": diffusers.__version__}
    config.update({k: v for k, v in dict(controlnet.config).items() if not k.startswith("_")})
    config[VAE_CONDITION_KEY] = True
    if prediction_type is not None:
        config[PREDICTION_KEY] = prediction_type
    state = {k: v.detach().contiguous().cpu() for k, v in to_disk_state_dict(controlnet.state_dict()).items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True, default=list) + "\n")
    return folder


def load_ccsr_controlnet(
    folder: str | os.PathLike, torch_dtype: torch.dtype | None = None, allow_pickle: bool = False
):
    """Load a CCSR ControlNet strictly: every tensor in the file used, every parameter filled.

    Raises ``FileNotFoundError`` / ``ValueError`` that name the folder, the file and the fix.
    """
    from diffusers import ControlNetModel

    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: a CCSR ControlNet folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(the 'Controlnet' download of the CCSR-v2 release, unpacked as controlnet/)"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}); re-download the ControlNet") from e
    if not config.get(VAE_CONDITION_KEY, False):
        raise ValueError(
            f"{config_path} lacks '{VAE_CONDITION_KEY}: true'. CCSR's ControlNet is conditioned on the VAE latent "
            "of the LR image; without the flag this is a pixel-hint ControlNet and its weights would be silently "
            "misread (the reference loads it with a random hint encoder). Use the CCSR-v2 ControlNet release, or "
            f'add "{VAE_CONDITION_KEY}": true if the weights hold condition_conv_in.*'
        )
    state = _read_weights(folder, allow_pickle, "ControlNet")
    state = from_disk_state_dict(state)
    with torch.device("meta"):
        model = _swap_embedding(
            ControlNetModel.from_config({k: v for k, v in config.items() if k not in _NOT_DIFFUSERS})
        )
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        hint = ""
        if any(k.startswith("controlnet_cond_embedding.blocks") for k in unexpected):
            hint = " The file holds a pixel-hint encoder (controlnet_cond_embedding.*): it is not a CCSR ControlNet."
        raise ValueError(
            f"{folder}: weights do not match {CONFIG_NAME}: {len(missing)} missing "
            f"(e.g. {[to_disk_name(k) for k in missing[:3]]}), {len(unexpected)} unexpected "
            f"(e.g. {[to_disk_name(k) for k in unexpected[:3]]}).{hint} Check that config and weights come from the same release."
        )
    for name, tensor in model.state_dict().items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{folder}: tensor {to_disk_name(name)} has shape {tuple(state[name].shape)} in the file but "
                f"{tuple(tensor.shape)} in {CONFIG_NAME}; config and weights come from different models"
            )
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    # assign=True keeps the file's dtype: a float16 release asked for in float32 is upcast here.
    return model.to(torch_dtype) if torch_dtype is not None else model


def _read_weights(folder: Path, allow_pickle: bool, what: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st, pkl = folder / WEIGHTS_NAME, folder / PICKLE_WEIGHTS_NAME
    if st.is_file():
        try:
            return load_file(str(st))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(
                f"{st} could not be read ({e}); the file is corrupt or truncated: download it again"
            ) from e
    if pkl.is_file():
        if not allow_pickle:
            raise ValueError(
                f"{folder} holds only pickled weights ({PICKLE_WEIGHTS_NAME}). Pickles can run code when loaded; "
                "pass allow_pickle=True (CLI: --allow-pickle) if you trust the source, or convert them to safetensors"
            )
        return torch.load(str(pkl), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{what} weights not found: expected {st}")
