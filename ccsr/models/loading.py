"""Find and load CCSR-v2 components from the release layout, a single folder, or a Hub repo.

Accepted layouts (spec §2.5):

* **official release**::

      ROOT/stable-diffusion-2-1-base/{unet,text_encoder,tokenizer,scheduler}/   # SD-2.1-base, diffusers layout
      ROOT/controlnet/{config.json, diffusion_pytorch_model.safetensors}      # CCSR stage 1
      ROOT/vae/{config.json, diffusion_pytorch_model.safetensors}             # CCSR stage 2

* **single folder** (the community re-host, our own exports and ccsr-tiny):
  ``ROOT/{unet,text_encoder,tokenizer,scheduler,controlnet,vae}/``.

A model folder may also hold ``inference_defaults.json`` with the settings its authors recommend
(``{"color_fix": ..., "border_pad": ...}``; ccsr-tiny ships ``"wavelet"`` and 16). Without it the
reference's defaults apply. :func:`recommended_color_fix` and :func:`recommended_border_pad` read it.

Any component can be pointed elsewhere with ``base=``, ``controlnet=`` or ``vae=`` (the reference's
three path flags). ``ROOT`` may be a Hugging Face repo id; it is fetched with ``huggingface_hub``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ccsr.diffusion import PREDICTION_TYPES

BASE_SUBFOLDER = "stable-diffusion-2-1-base"
WHERE_TO_GET = (
    "CCSR-v2 weights: the 'Controlnet' and 'VAE' downloads linked from https://github.com/csslc/CCSR (branch "
    "CCSR-v2.0), or the Hub re-host kharma1/ccsr_v2_repost. SD-2.1-base: no longer at stabilityai/"
    "stable-diffusion-2-1-base; use a mirror of it in diffusers layout (e.g. the copy inside kharma1/ccsr_v2_repost)."
)

# (subfolder, files that must exist, alternatives for the weights)
_REQUIRED = {
    "unet": ("config.json", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "vae": ("config.json", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "text_encoder": ("config.json", ("model.safetensors", "pytorch_model.bin")),
    "tokenizer": ("tokenizer_config.json", ("vocab.json", "tokenizer.json")),
    "scheduler": ("scheduler_config.json", ()),
}


@dataclass(frozen=True)
class ComponentPaths:
    """Folder of each component (each holds the diffusers/transformers files directly)."""

    unet: Path
    text_encoder: Path
    tokenizer: Path
    scheduler: Path
    controlnet: Path
    vae: Path
    #: the model folder itself (local, or the fetched Hub snapshot); not a component
    root: Path | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items() if k != "root"}


def _fetch(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # hub raises many types; all mean "could not get it"
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder and could not be fetched from the Hugging Face Hub ({type(e).__name__}: {e}). "
            f"Pass a local folder, or check the repo id and your network. {WHERE_TO_GET}"
        ) from e


def resolve_paths(
    model: str | os.PathLike,
    base: str | os.PathLike | None = None,
    controlnet: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
) -> ComponentPaths:
    """Locate every component's folder, checking that its files exist."""
    root = Path(model)
    if not root.is_dir():
        if str(model).count("/") == 1 and not str(model).startswith((".", "/", "~")):
            root = _fetch(str(model))
        else:
            raise FileNotFoundError(f"model folder {root} does not exist. {WHERE_TO_GET}")
    base_root = Path(base) if base else (root / BASE_SUBFOLDER if (root / BASE_SUBFOLDER).is_dir() else root)
    paths = ComponentPaths(
        unet=base_root / "unet",
        text_encoder=base_root / "text_encoder",
        tokenizer=base_root / "tokenizer",
        scheduler=base_root / "scheduler",
        controlnet=_component_dir(Path(controlnet) if controlnet else root, "controlnet"),
        vae=_component_dir(Path(vae) if vae else root, "vae"),
        root=root,
    )
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        folder = getattr(paths, name)
        must, alternatives = _REQUIRED[name]
        if not (folder / must).is_file():
            raise FileNotFoundError(
                f"{name}: {folder / must} not found. Expected layout: see ccsr.models.loading. {WHERE_TO_GET}"
            )
        if alternatives and not any((folder / a).is_file() for a in alternatives):
            raise FileNotFoundError(
                f"{name}: no weights in {folder}: expected {alternatives[0]}. {WHERE_TO_GET}"
            )
    return paths


INFERENCE_DEFAULTS = "inference_defaults.json"
DEFAULT_COLOR_FIX = "adain"  # the reference's


def _inference_defaults(root: str | os.PathLike | None) -> tuple[Path | None, dict]:
    """``(path, settings)`` of a model folder's ``inference_defaults.json`` (``(None, {})`` without one)."""
    path = Path(root) / INFERENCE_DEFAULTS if root is not None else None
    if path is None or not path.is_file():
        return None, {}
    try:
        values = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not a JSON object ({e}); fix or delete the file") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: not a JSON object; fix or delete the file")
    return path, values


def recommended_color_fix(root: str | os.PathLike | None) -> str:
    """The colour fix a model folder recommends in ``inference_defaults.json``, else ``"adain"``."""
    from ccsr.color import COLOR_FIXES

    path, values = _inference_defaults(root)
    value = values.get("color_fix", DEFAULT_COLOR_FIX)
    if value not in COLOR_FIXES:
        raise ValueError(f"{path}: color_fix={value!r} is not one of {COLOR_FIXES}; fix or delete the file")
    return value


def recommended_border_pad(root: str | os.PathLike | None) -> int:
    """The ``border_pad`` a model folder recommends in ``inference_defaults.json``, else 0 (the reference:
    no padding). ccsr-tiny's small autoencoder darkens the image border without it."""
    path, values = _inference_defaults(root)
    value = values.get("border_pad", 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value % 8:
        raise ValueError(f"{path}: border_pad={value!r} must be a multiple of 8 >= 0; fix or delete the file")
    return value


def write_inference_defaults(root: str | os.PathLike, color_fix: str, *, border_pad: int = 0) -> Path:
    """Record the colour fix (and a non-zero ``border_pad``) a release recommends (read back by
    :func:`recommended_color_fix` and :func:`recommended_border_pad`)."""
    from ccsr.color import COLOR_FIXES

    if color_fix not in COLOR_FIXES:
        raise ValueError(f"color_fix={color_fix!r} is not one of {COLOR_FIXES}")
    if border_pad < 0 or border_pad % 8:
        raise ValueError(f"border_pad={border_pad} must be a multiple of 8 >= 0")
    values: dict[str, object] = {"color_fix": color_fix}
    if border_pad:
        values["border_pad"] = border_pad
    path = Path(root) / INFERENCE_DEFAULTS
    path.write_text(json.dumps(values, indent=2) + "\n")
    return path


def _component_dir(path: Path, name: str) -> Path:
    """Accept both ``.../controlnet`` and its parent, as the reference's ``subfolder=`` did."""
    return (
        path
        if path.name == name or (path / "config.json").is_file() and not (path / name).is_dir()
        else path / name
    )


@dataclass
class Components:
    unet: object
    controlnet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler: object
    paths: ComponentPaths


def _check_weights(
    folder: Path, allow_pickle: bool, safetensors_name: str, pickle_name: str, what: str
) -> bool:
    """Return use_safetensors; refuse pickles unless allowed."""
    if (folder / safetensors_name).is_file():
        return True
    if (folder / pickle_name).is_file() and not allow_pickle:
        raise ValueError(
            f"{what}: {folder} holds only pickled weights ({pickle_name}); pass allow_pickle=True "
            "(CLI --allow-pickle) if you trust the source, or convert them to safetensors"
        )
    return False


def load_components(
    model: str | os.PathLike,
    base: str | os.PathLike | None = None,
    controlnet: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    torch_dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
    load_controlnet: bool = True,
) -> Components:
    """Load every component, frozen and in eval mode, in ``torch_dtype`` (default float32).

    ``load_controlnet=False`` leaves ``controlnet`` as ``None`` (training a new one from the base model)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from ccsr.models.controlnet import load_ccsr_controlnet

    paths = resolve_paths(model, base, controlnet, vae)
    dtype = torch_dtype or torch.float32

    def load(cls, folder: Path, st: str, pkl: str, what: str):
        use_st = _check_weights(folder, allow_pickle, st, pkl, what)
        try:
            return cls.from_pretrained(folder, torch_dtype=dtype, use_safetensors=use_st)
        except (OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"{what}: could not load {folder}: {e}. {WHERE_TO_GET}") from e

    d_st, d_pkl = "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"
    unet = load(UNet2DConditionModel, paths.unet, d_st, d_pkl, "unet")
    vae_model = load(AutoencoderKL, paths.vae, d_st, d_pkl, "vae")
    text_encoder = load(
        CLIPTextModel, paths.text_encoder, "model.safetensors", "pytorch_model.bin", "text_encoder"
    )
    tokenizer = CLIPTokenizer.from_pretrained(paths.tokenizer)
    scheduler_cfg = json.loads((paths.scheduler / "scheduler_config.json").read_text())
    # The official CCSR-v2 weights are epsilon prediction (SD-2.1-base); ccsr-tiny is v prediction.
    kind = scheduler_cfg.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(
            f"{paths.scheduler / 'scheduler_config.json'}: prediction_type={kind!r} is not one of "
            f"{', '.join(PREDICTION_TYPES)}; fix the scheduler config of this model"
        )
    scheduler = DDPMScheduler.from_pretrained(paths.scheduler)
    cn = (
        load_ccsr_controlnet(paths.controlnet, torch_dtype=dtype, allow_pickle=allow_pickle)
        if load_controlnet
        else None
    )
    for m in (unet, vae_model, text_encoder, cn):
        if m is not None:
            m.eval().requires_grad_(False)
    return Components(unet, cn, vae_model, text_encoder, tokenizer, scheduler, paths)
