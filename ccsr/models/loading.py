"""Find and load CCSR-v2 components from the release layout, a single folder, or a Hub repo.

Accepted layouts (docs/algorithm.md §2.5):

* **official release**::

      ROOT/stable-diffusion-2-1-base/{unet,text_encoder,tokenizer,scheduler}/   # SD-2.1-base, diffusers layout
      ROOT/controlnet/{config.json, diffusion_pytorch_model.safetensors}      # CCSR stage 1
      ROOT/vae/{config.json, diffusion_pytorch_model.safetensors}             # CCSR stage 2

* **single folder** (the community re-host, our own exports and ccsr-tiny):
  ``ROOT/{unet,text_encoder,tokenizer,scheduler,controlnet,vae}/``.

A model folder may also hold ``inference_defaults.json`` with the settings its authors recommend
(``color_fix``, ``postprocess``, ``tile_window``, ``border_pad``, ``wavelet_levels``; ccsr-tiny ships
``{"color_fix": "wavelet", "border_pad": 16, "wavelet_levels": 3}``). Without it, or for a key it does
not name, the reference's behaviour applies.
:func:`recommended_settings` reads it.

Any component can be pointed elsewhere with ``base=``, ``controlnet=`` or ``vae=`` (the reference's
three path flags). ``ROOT`` may be a Hugging Face repo id; it is fetched with ``huggingface_hub``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ccsr.diffusion import PREDICTION_TYPES
from ccsr.models.shipped import resolve_model_root
from ccsr.options import (
    COLOR_FIXES,
    POSTPROCESS_MODES,
    TILE_WINDOWS,
    WAVELET_LEVELS,
    check_wavelet_levels,
)
from ccsr.quiet import quiet_loading

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

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
    """Locate every component's folder, checking that its files exist. ``model`` may also name a model
    shipped with ccsr (``"tiny"``, :mod:`ccsr.models.shipped`)."""
    root = Path(resolve_model_root(model))
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
#: What a model folder may recommend in ``inference_defaults.json``, and the authors' behaviour used
#: without a recommendation (the official weights ship none).
REFERENCE_DEFAULTS: dict[str, str | int] = {
    "color_fix": "adain",
    "postprocess": "reference",
    "tile_window": "reference",
    "border_pad": 0,  # pixels mirrored around the canvas before encoding, cropped after decoding
    "wavelet_levels": WAVELET_LEVELS,  # bands of the decoded image the wavelet colour fix keeps
}
DEFAULT_COLOR_FIX = REFERENCE_DEFAULTS["color_fix"]


def _problem(key: str, value: object) -> str | None:
    """What is wrong with ``value`` for the inference default ``key``, or ``None``."""
    if key == "wavelet_levels":
        try:
            check_wavelet_levels(value)
        except ValueError as e:
            return str(e)
        return None
    if key == "border_pad":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0 and value % 8 == 0
        return None if ok else f"border_pad={value!r} must be a multiple of 8 >= 0"
    choices = {"color_fix": COLOR_FIXES, "postprocess": POSTPROCESS_MODES, "tile_window": TILE_WINDOWS}[key]
    return None if value in choices else f"{key}={value!r} is not one of {choices}"


def recommended_settings(root: str | os.PathLike | None) -> dict[str, str | int]:
    """Every key of :data:`REFERENCE_DEFAULTS`: the value a model folder recommends in
    ``inference_defaults.json``, else the reference's."""
    path = Path(root) / INFERENCE_DEFAULTS if root is not None else None
    if path is None or not path.is_file():
        return dict(REFERENCE_DEFAULTS)
    try:
        data = json.loads(path.read_text())
        values = {k: data.get(k, v) for k, v in REFERENCE_DEFAULTS.items()}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not a JSON object ({e}); fix or delete the file") from None
    for key, value in values.items():
        problem = _problem(key, value)
        if problem:
            raise ValueError(f"{path}: {problem}; fix or delete the file")
    return values


def recommended_color_fix(root: str | os.PathLike | None) -> str:
    """The colour fix a model folder recommends in ``inference_defaults.json``, else ``"adain"``."""
    return str(recommended_settings(root)["color_fix"])


def recommended_border_pad(root: str | os.PathLike | None) -> int:
    """The ``border_pad`` a model folder recommends, else 0 (the reference: no padding). ccsr-tiny's small
    autoencoder darkens the image border without it."""
    return int(recommended_settings(root)["border_pad"])  # type: ignore[call-overload]


def write_inference_defaults(
    root: str | os.PathLike, color_fix: str | None = None, **settings: str | int
) -> Path:
    """Record the settings a release recommends (keys of :data:`REFERENCE_DEFAULTS`; read back by
    :func:`recommended_settings`). Only the values given are written."""
    if color_fix is not None:
        settings = {"color_fix": color_fix, **settings}
    for key, value in settings.items():
        if key not in REFERENCE_DEFAULTS:
            raise ValueError(f"{key!r} is not an inference default; choose among {tuple(REFERENCE_DEFAULTS)}")
        problem = _problem(key, value)
        if problem:
            raise ValueError(problem)
    path = Path(root) / INFERENCE_DEFAULTS
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def _component_dir(path: Path, name: str) -> Path:
    """Accept both ``.../controlnet`` and its parent, as the reference's ``subfolder=`` did."""
    return (
        path
        if path.name == name or (path / "config.json").is_file() and not (path / name).is_dir()
        else path / name
    )


#: Native resolution (UNet ``sample_size`` x 8) from which an unmarked v-prediction base is taken for
#: SD-2.x's 768-px model (``stable-diffusion-2-1``), never what CCSR-v2 was trained on.
SD_768 = 768


def check_base_matches(paths: ComponentPaths, kind: str | None = None) -> None:
    """Refuse a base model whose prediction type (``kind``; default: its scheduler config's) differs from
    what the ControlNet was trained for.

    A ControlNet exported by this package records it (``config.json``'s ``prediction_type``); the authors'
    release records nothing and was trained on SD-2.1-base (epsilon, 512 px). For an unmarked ControlNet,
    a v-prediction base at 768 px or more (``stable-diffusion-2-1`` instead of ``-base``) is refused; smaller
    v-prediction models (ccsr-tiny and others trained with this package before the key existed) load.
    """
    from ccsr.models.controlnet import CONFIG_NAME, PREDICTION_KEY

    try:
        if kind is None:
            sched = json.loads((paths.scheduler / "scheduler_config.json").read_text())
            kind = sched.get("prediction_type", "epsilon")
        trained = json.loads((paths.controlnet / CONFIG_NAME).read_text()).get(PREDICTION_KEY)
        sample_size = json.loads((paths.unet / "config.json").read_text()).get("sample_size") or 0
    except (OSError, ValueError, AttributeError):
        return  # load_ccsr_controlnet / from_pretrained report unreadable configs
    pixels = max(sample_size) if isinstance(sample_size, list | tuple) else int(sample_size)
    pixels *= 8
    if trained is None and not (kind == "v_prediction" and pixels >= SD_768):
        return
    if trained == kind:
        return
    base = paths.unet.parent
    trained_on = (
        f"the {trained} prediction type"
        if trained is not None
        else "SD-2.1-base (epsilon prediction, 512 px), as the authors' CCSR-v2 release"
    )
    raise ValueError(
        f"base model {base} predicts {kind} (native {pixels} px"
        + (", e.g. stable-diffusion-2-1 rather than stable-diffusion-2-1-base)" if pixels >= SD_768 else ")")
        + f", but the ControlNet {paths.controlnet} and VAE {paths.vae} were trained for {trained_on}. "
        + (
            "Use stable-diffusion-2-1-base as the base model: put it at MODEL/"
            f"{BASE_SUBFOLDER} or pass base= (CLI --base). "
            if trained in (None, "epsilon")
            else "Use the base model this ControlNet was trained on (pass base=, CLI --base). "
        )
        + WHERE_TO_GET
    )


@dataclass
class Components:
    unet: UNet2DConditionModel
    controlnet: ControlNetModel | None  # None with load_components(load_controlnet=False)
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler
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
            with quiet_loading():
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
    if load_controlnet:
        check_base_matches(paths, kind)
    cn = (
        load_ccsr_controlnet(paths.controlnet, torch_dtype=dtype, allow_pickle=allow_pickle)
        if load_controlnet
        else None
    )
    for m in (unet, vae_model, text_encoder, cn):
        if m is not None:
            m.eval().requires_grad_(False)
    return Components(unet, cn, vae_model, text_encoder, tokenizer, scheduler, paths)
