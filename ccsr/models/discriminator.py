"""Stage-2 projected discriminator (docs/algorithm.md §4.3): frozen DINO features, trainable spectral-norm heads.

The reference (``ADD/models/discriminator.py`` of CCSR-v2.0, from StyleGAN-T / ADD by Sauer et al.)
runs a frozen DINO ViT-S/16 on the augmented image, taps five token maps (the patch embeddings
and the outputs of blocks 2, 5, 8 and 11), and gives each to a small 1-D convolutional head whose
per-token logits are projected onto an embedding of the condition: the DINOv2 ViT-S/14 CLS token
of the LR image. Only the heads train.

Here both backbones are transformers model classes (``ViTModel`` for ``facebook/dino-vits16``,
``Dinov2Model`` for ``facebook/dinov2-small``), loaded from a local folder or a Hub id, so no
vendored ViT code or hard-coded ``.pth`` path is needed. :func:`save_tiny_backbones` writes
random miniature versions for tests.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: ImageNet statistics: DINO was trained on ImageNet-normalised inputs (DINOv2's condition is
#: fed *without* normalisation, as the reference does).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FEATURE_NETWORK = "facebook/dino-vits16"
CONDITION_NETWORK = "facebook/dinov2-small"
_WHERE = (
    "Download it where a network is available, e.g. `hf download {hub} --local-dir models/{leaf}`, "
    "and set {key}: models/{leaf}. (The reference's dino/*.pth files hold the same weights in timm layout; "
    "the Hub copies are the transformers layout read here.)"
)


# ----------------------------------------------------------------------------- augmentation
def diff_augment(x: torch.Tensor, translation: float = 0.125, cutout: float = 0.2) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) ``translation`` then ``cutout``, per sample, differentiable.

    ``x``: ``(B, C, H, W)`` in ``[-1, 1]``. Translation shifts each image by up to
    ``translation * size`` pixels (zero fill); cutout zeroes one square of ``cutout * size`` per
    image. Random draws use the global torch RNG (checkpointed by accelerate, so resumable).
    """
    b, _, h, w = x.shape
    dev = x.device
    if translation > 0:
        sh, sw = int(h * translation + 0.5), int(w * translation + 0.5)
        ty = torch.randint(-sh, sh + 1, (b, 1, 1), device=dev)
        tx = torch.randint(-sw, sw + 1, (b, 1, 1), device=dev)
        gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
        # Index into a copy padded by one zero pixel on every side: out-of-range sources read zeros.
        src_y = torch.clamp(gy.unsqueeze(0) + ty + 1, 0, h + 1)
        src_x = torch.clamp(gx.unsqueeze(0) + tx + 1, 0, w + 1)
        padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)
        x = padded[torch.arange(b, device=dev)[:, None, None], src_y, src_x].permute(0, 3, 1, 2).contiguous()
    if cutout > 0:
        ch, cw = int(h * cutout + 0.5), int(w * cutout + 0.5)
        cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=dev)
        cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=dev)
        gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
        inside = (
            (gy >= cy - ch // 2) & (gy < cy - ch // 2 + ch) & (gx >= cx - cw // 2) & (gx < cx - cw // 2 + cw)
        )
        x = x * (~inside).unsqueeze(1).to(x.dtype)
    return x


# ----------------------------------------------------------------------------- heads
def _sn_conv1d(c_in: int, c_out: int, kernel_size: int) -> nn.Module:
    conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    return spectral_norm(conv, n_power_iterations=1, eps=1e-12)


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # /sqrt(2) keeps the variance of the sum equal to that of its inputs.
        return (self.fn(x) + x) / math.sqrt(2.0)


class _ScaledLinear(nn.Module):
    """StyleGAN's ``FullyConnectedLayer``: N(0, 1) weights scaled by ``1/sqrt(in)`` at run time."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.gain = 1.0 / math.sqrt(c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.gain, self.bias)


def _block(channels: int, kernel_size: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        _sn_conv1d(channels, channels, kernel_size), nn.GroupNorm(groups, channels), nn.LeakyReLU(0.2)
    )


class DiscHead(nn.Module):
    """One head: token map ``(B, C, N)`` and condition ``(B, c_dim)`` -> logits ``(B, N)``.

    ``1x1 conv -> residual 9-tap circular conv -> 1x1 conv to cmap_dim``, then the projection
    ``sum_k out_k * emb(c)_k / sqrt(cmap_dim)`` (Miyato & Koyama 2018's projection discriminator).
    """

    def __init__(
        self, channels: int, c_dim: int, cmap_dim: int = 64, kernel_size: int = 9, groups: int = 4
    ) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"feature width {channels} is not divisible by norm_groups={groups}")
        self.main = nn.Sequential(
            _block(channels, 1, groups), _Residual(_block(channels, kernel_size, groups))
        )
        self.cls = _sn_conv1d(channels, cmap_dim, 1)
        self.cmapper = _ScaledLinear(c_dim, cmap_dim)
        self.cmap_dim = cmap_dim

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = self.cls(self.main(x))
        cmap = self.cmapper(c.to(out.dtype)).unsqueeze(-1)
        return (out * cmap).sum(1) / math.sqrt(self.cmap_dim)


# ----------------------------------------------------------------------------- discriminator
def default_taps(num_layers: int) -> tuple[int, ...]:
    """Hidden-state indices of the five taps: embeddings, then after 1/4, 1/2, 3/4 and all blocks.

    For ViT-S/16's 12 blocks this is ``(0, 3, 6, 9, 12)``: the reference's patch embeddings and
    blocks 2, 5, 8, 11 (0-based), since transformers' ``hidden_states[i]`` is the output of block ``i-1``.
    """
    if num_layers < 4:
        raise ValueError(f"the feature network has {num_layers} blocks; five distinct taps need at least 4")
    return tuple(k * num_layers // 4 for k in range(5))


class ProjectedDiscriminator(nn.Module):
    """Frozen DINO ViT features + trainable heads, conditioned on a frozen DINOv2 CLS embedding.

    Args:
        feature_network: a transformers ``ViTModel`` (DINO ViT-S/16 in the reference).
        condition_network: a transformers ``Dinov2Model`` (DINOv2 ViT-S/14 in the reference).
        taps: indices into ``hidden_states`` (0 = patch embeddings); default :func:`default_taps`.
        cmap_dim, kernel_size, norm_groups: head sizes (reference: 64, 9, 4).
        augment: apply DiffAugment translation + cutout to every input (reference: on).
        p_crop: probability of a random ``image_size`` crop when the input is larger (reference 0.5).
    """

    mean: torch.Tensor  # ImageNet normalisation, registered as buffers
    std: torch.Tensor

    def __init__(
        self,
        feature_network: PreTrainedModel,
        condition_network: PreTrainedModel,
        taps: tuple[int, ...] | None = None,
        cmap_dim: int = 64,
        kernel_size: int = 9,
        norm_groups: int = 4,
        augment: bool = True,
        p_crop: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = feature_network.eval().requires_grad_(False)
        self.conditioner = condition_network.eval().requires_grad_(False)
        n = self.features.config.num_hidden_layers
        self.taps = tuple(taps) if taps is not None else default_taps(n)
        if not self.taps or any(not 0 <= t <= n for t in self.taps):
            raise ValueError(
                f"taps={self.taps} must be hidden-state indices in 0..{n} of the feature network"
            )
        width, c_dim = self.features.config.hidden_size, self.conditioner.config.hidden_size
        self.heads = nn.ModuleList(
            DiscHead(width, c_dim, cmap_dim, kernel_size, norm_groups) for _ in self.taps
        )
        self.augment = augment
        self.p_crop = p_crop
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        # The backbones are fixed feature extractors: never let them switch to training mode.
        super().train(mode)
        self.features.eval()
        self.conditioner.eval()
        return self

    @torch.no_grad()
    def condition(self, lr: torch.Tensor) -> torch.Tensor:
        """DINOv2 CLS token (after the final norm) of the LR image ``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, c_dim)``.

        Resized bilinearly to the network's ``image_size`` (518 for ViT-S/14), without ImageNet
        normalisation, exactly as the reference feeds it.
        """
        size = self.conditioner.config.image_size
        x = F.interpolate(lr.float(), size=(size, size), mode="bilinear", align_corners=False)
        out = self.conditioner(pixel_values=x.to(self.conditioner.dtype))
        return out.pooler_output.float()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, sum of tokens over taps)`` for images ``x`` ``(B, 3, H, W)`` in ``[-1, 1]``."""
        if self.augment:
            x = diff_augment(x)
        x = (x + 1) / 2
        size = self.features.config.image_size
        if x.shape[-1] > size and x.shape[-2] > size and torch.rand(()) < self.p_crop:
            top = int(torch.randint(0, x.shape[-2] - size + 1, ()))
            left = int(torch.randint(0, x.shape[-1] - size + 1, ()))
            x = x[..., top : top + size, left : left + size]
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="area")
        x = (x - self.mean) / self.std
        hidden = self.features(
            pixel_values=x.to(self.features.dtype), output_hidden_states=True
        ).hidden_states
        logits = []
        for tap, head in zip(self.taps, self.heads):
            tokens = hidden[tap]
            # "AddReadout": the CLS token is added to every patch token, then tokens become the 1-D axis.
            tokens = (tokens[:, 1:] + tokens[:, :1]).transpose(1, 2).float()
            logits.append(head(tokens, c))
        return torch.cat(logits, dim=1)


# ----------------------------------------------------------------------------- loading
def load_backbone(
    cls: type[PreTrainedModel], name_or_path: str | os.PathLike, model_type: str, key: str, hub: str
) -> PreTrainedModel:
    """``cls.from_pretrained(name_or_path)``, refusing anything that would leave weights random.

    ``key`` names the config field, ``hub`` the usual Hub id; both appear in the error message.
    """
    from transformers import PretrainedConfig

    leaf = hub.split("/")[-1]
    where = _WHERE.format(hub=hub, leaf=leaf, key=key)
    path = Path(name_or_path)
    looks_local = (
        path.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") != 1
    )
    if looks_local and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{key}: {path / 'config.json'} not found; expected a transformers {cls.__name__} folder. {where}"
        )
    try:
        config, _ = PretrainedConfig.get_config_dict(str(name_or_path))
    except OSError as e:
        raise FileNotFoundError(
            f"{key}: {name_or_path!r} is not a local folder and is not in the Hugging Face cache "
            f"(offline or not downloadable: {e}). {where}"
        ) from e
    if config.get("model_type") != model_type:
        raise ValueError(
            f"{key}: {name_or_path} holds a {config.get('model_type')!r} model, expected {model_type!r} ({hub}). {where}"
        )
    kwargs = {"add_pooling_layer": False} if model_type == "vit" else {}
    model, info = cls.from_pretrained(str(name_or_path), output_loading_info=True, **kwargs)
    missing = [k for k in info.get("missing_keys", ()) if "mask_token" not in k]
    if missing:
        raise ValueError(
            f"{key}: {name_or_path} lacks weights for {sorted(missing)[:5]} ... ({len(missing)} tensors). {where}"
        )
    return model


def build_discriminator(
    feature_network: str | os.PathLike = FEATURE_NETWORK,
    condition_network: str | os.PathLike = CONDITION_NETWORK,
    **kwargs: Any,
) -> ProjectedDiscriminator:
    """Load both backbones (local folder or Hub id) and build the discriminator around them."""
    from transformers import Dinov2Model, ViTModel

    feats = load_backbone(ViTModel, feature_network, "vit", "discriminator.feature_network", FEATURE_NETWORK)
    cond = load_backbone(
        Dinov2Model, condition_network, "dinov2", "discriminator.condition_network", CONDITION_NETWORK
    )
    return ProjectedDiscriminator(feats, cond, **kwargs)


def save_tiny_backbones(root: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """Random miniature ``ViTModel`` (4 blocks, 32 px, patch 8) and ``Dinov2Model`` (2 blocks, 28 px,
    patch 7) saved as transformers folders under ``root``; returns ``(feature_dir, condition_dir)``."""
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    torch.manual_seed(seed)
    root = Path(root)
    vit = ViTModel(
        ViTConfig(
            hidden_size=8,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=16,
            image_size=32,
            patch_size=8,
        ),
        add_pooling_layer=False,
    )
    dino2 = Dinov2Model(
        Dinov2Config(
            hidden_size=12,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2,
            image_size=28,
            patch_size=7,
        )
    )
    vit.save_pretrained(root / "dino-vits16-tiny")
    dino2.save_pretrained(root / "dinov2-small-tiny")
    return root / "dino-vits16-tiny", root / "dinov2-small-tiny"
