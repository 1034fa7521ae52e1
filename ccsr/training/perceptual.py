"""LPIPS perceptual loss for stage 2, built offline from the ``lpips`` package and a local trunk file.

The reference's stage-2 script left ``lpips.LPIPS(net="vgg")`` commented out although its README
passes ``--lambda_lpips 1.0``, and the authors say the term is needed to stabilise the GAN
(csslc/CCSR issues #27, #40; docs/algorithm.md §4.2). Here it is on.

``lpips.LPIPS`` normally downloads its ImageNet trunk (VGG-16 or AlexNet) through torchvision.
To work offline and fail clearly, the trunk is created with random weights and then filled from
torchvision's weight file, read from ``backbone_weights`` or from torchvision's own cache
(``$TORCH_HOME/hub/checkpoints/``). The calibrated linear layers ship inside the ``lpips`` package.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

#: torchvision's ImageNet weight files for the LPIPS trunks (torchvision.models.*_Weights.IMAGENET1K_V1).
TRUNK_WEIGHTS = {
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
}


def default_trunk_path(net: str) -> Path:
    """Where torchvision caches the trunk's weights (``torch.hub.get_dir()/checkpoints/<file>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TRUNK_WEIGHTS[net][0]


def _load_trunk(trunk: nn.Module, state: dict[str, torch.Tensor], path: Path, net: str) -> None:
    """Copy torchvision ``features.<i>.*`` tensors into lpips' ``slice<k>.<i>.*`` layout."""
    state = {k.removeprefix("features."): v for k, v in state.items()}
    target = {}
    for slice_name, block in trunk.named_children():
        for name, tensor in block.state_dict().items():
            target[f"{slice_name}.{name}"] = (name, tensor)
    missing = [f"features.{name}" for name, _ in target.values() if name not in state]
    if missing:
        raise ValueError(
            f"LPIPS ({net}): {path} is not a torchvision {net} checkpoint: it lacks {missing[:4]} "
            f"({len(missing)} tensors). Use {TRUNK_WEIGHTS[net][1]}"
        )
    trunk.load_state_dict({k: state[name].to(t.dtype) for k, (name, t) in target.items()}, strict=True)


def build_lpips(net: str = "vgg", backbone_weights: str | os.PathLike | None = None) -> nn.Module:
    """A frozen ``lpips.LPIPS`` (v0.1) whose trunk weights come from a local file.

    Call it as ``lpips_model(a, b)`` with images ``(B, 3, H, W)`` in ``[-1, 1]``; it returns
    per-image distances ``(B, 1, 1, 1)``.

    Raises:
        ImportError: the ``lpips`` package is not installed.
        FileNotFoundError: the trunk weights are neither at ``backbone_weights`` nor in torchvision's cache.
    """
    if net not in TRUNK_WEIGHTS:
        raise ValueError(f"lpips net={net!r} must be one of {sorted(TRUNK_WEIGHTS)}")
    try:
        import lpips
    except ImportError as e:
        raise ImportError(
            "stage 2's LPIPS loss needs the `lpips` package: pip install lpips (or ccsr[train])"
        ) from e
    file_name, url = TRUNK_WEIGHTS[net]
    path = Path(backbone_weights).expanduser() if backbone_weights else default_trunk_path(net)
    if not path.is_file():
        where = "lpips.backbone_weights" if backbone_weights else "torchvision's cache"
        raise FileNotFoundError(
            f"LPIPS ({net}) needs torchvision's ImageNet weights {file_name}, not found at {path} ({where}). "
            f"Download {url} and either put it in {default_trunk_path(net).parent}/ or set lpips.backbone_weights "
            "to its path (or set objective.weight_lpips=0 to train without LPIPS)."
        )
    with warnings.catch_warnings():
        # torchvision's deprecation warning for lpips' `pretrained=` argument; the trunk is filled below.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    _load_trunk(model.net, state, path, net)
    return model.eval().requires_grad_(False)
