"""Typed, strict configuration: frozen dataclasses filled from a yaml file plus ``key=value`` overrides.

    >>> cfg = load_config(Stage1Config, "configs/train/stage1.yaml", ["optimizer.learning_rate=1e-5"])

Rules (in the spirit of nanoGPT's configurator rather than BasicSR's ``opt.get``):

* every yaml section is a dataclass, every key a typed field; an unknown key is a :class:`ConfigError`
  that lists the valid keys (and the nearest one), a missing required key names itself;
* values are coerced to the field type: ``"1e-5"`` (a *string* for PyYAML) becomes a float,
  ``--set data.train=[a,b]`` a tuple, ``--set model.vae=null`` ``None``; anything else is an error;
* checks that span fields live in ``__post_init__`` and quote the numbers;
* :func:`save_config` writes the resolved config, loadable again with :func:`load_config`.

This module imports neither torch nor diffusers.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and the fix."""


# ---------------------------------------------------------------------------------------------- machinery
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return (
            f"list of {_type_name(args[0])}"
            if len(args) == 2 and args[1] is Ellipsis
            else f"list of {len(args)}"
        )
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a yaml value to ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping) of {_type_name(tp)}, got {value!r}")
        return _from_dict(tp, value, key + ".")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        return _coerce_literal(value, typing.get_args(tp), key)
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(tp), key)
    if tp in _SCALARS:
        try:
            return _SCALARS[tp](value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}") from None
    raise ConfigError(f"{key}: unsupported field type {tp!r}")  # a bug in a config class, not user input


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
        if type(None) in args:
            return None
    else:
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _coerce_literal(value: Any, choices: tuple, key: str) -> Any:
    if isinstance(value, bool):
        # YAML 1.1 reads a bare `no` / `off` as False: map it back to the spelling the choice uses.
        spellings = ("yes", "true", "on") if value else ("no", "false", "off")
        value = next((a for a in choices if isinstance(a, str) and a.lower() in spellings), value)
    if value in choices and not (isinstance(value, bool) and bool not in map(type, choices)):
        return value
    raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in choices)}")


def _coerce_tuple(value: Any, args: tuple, key: str) -> tuple:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(items))
    if len(items) != len(args):
        raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
    return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(items, args)))


_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    if isinstance(value, (int, float, str)):
        return int(value)
    raise TypeError(value)


def _to_float(value: Any) -> float:
    # PyYAML reads "1e-5" as a string (YAML 1.1 needs "1.0e-5"): strings are parsed too.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(value)
    return float(value)


def _to_str(value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(value)


#: Scalar field types and their converters (``ValueError`` / ``TypeError``: not convertible).
_SCALARS: dict[Any, Callable[[Any], Any]] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        near = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
        raise ConfigError(f"{prefix}{k}: unknown key{hint}; valid: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key missing ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {p} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", yaml value)``; e.g. ``x=[1,2]`` -> ``("x", [1, 2])``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. optimizer.learning_rate=1e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


#: The default configs, shipped inside the package (``ccsr/configs`` is the repository's ``configs/``).
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def find_config_file(yaml_path: str | os.PathLike) -> Path:
    """``yaml_path`` itself when it exists; else, for a path under ``configs/`` (the defaults every config
    names, e.g. ``configs/tiny/arch.yaml``), the copy shipped in the package, so that an installed ccsr
    trains from any folder. :class:`ConfigError` names the path when neither exists."""
    path = Path(yaml_path)
    if path.is_file():
        return path
    parts = path.parts
    if not path.is_absolute() and len(parts) > 1 and parts[0] == "configs":
        packaged = PACKAGED_CONFIGS.joinpath(*parts[1:])
        if packaged.is_file():
            return packaged
    raise ConfigError(f"config file {path} not found (nor among the configs shipped with ccsr)")


def load_config(
    cls: type[T], yaml_path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Build ``cls`` from ``yaml_path`` (optional) with ``overrides`` (``"section.key=value"``) applied on top."""
    data: dict = {}
    if yaml_path is not None:
        path = find_config_file(yaml_path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid yaml: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}"
            )
    for text in overrides or ():
        key, value = parse_override(text)
        _set_path(data, key, value)
    return _from_dict(cls, data)


def config_to_dict(cfg: Any) -> dict:
    """A plain dict (tuples as lists) that :func:`load_config` reads back to an equal config."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as yaml (atomically: a crash never leaves half a file)."""
    from ccsr.atomic import write_text

    return write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def check(cond: bool, message: str) -> None:
    """The one assertion of every config's ``__post_init__``: :class:`ConfigError` with ``message``."""
    if not cond:
        raise ConfigError(message)


# ---------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class ModelConfig:
    """Where the frozen base model lives (any layout :func:`ccsr.models.loading.resolve_paths` accepts)."""

    pretrained: str  # release root: stable-diffusion-2-1-base/ (+ vae/), or a single folder
    base: str | None = None  # SD-2.1-base folder if not inside `pretrained`
    vae: str | None = None  # VAE folder (default: the one found under `pretrained`)
    controlnet_init: str | None = None  # pre-trained CCSR ControlNet folder; null: copy the UNet encoder


@dataclass(frozen=True)
class DataConfig:
    """Training images and the on-the-fly degradation."""

    train: tuple[str, ...]  # HQ image folders and/or list files (one path per line)
    degradation: str | None = (
        None  # yaml of Real-ESRGAN parameters; null: the reference values (docs/algorithm.md §3.4)
    )
    resolution: int = 512  # GT crop side; the reference hard-codes 512
    num_workers: int = 4  # DataLoader workers (the Dataset does no device work)
    cache_mb: int = 0  # decoded training images kept in memory per worker (small data sets); 0: none
    val_lr: str | None = None  # paired validation folders (same file stems)
    val_hr: str | None = None
    val_max_images: int = 4  # validation images logged every train.validation_steps

    def __post_init__(self) -> None:
        check(len(self.train) > 0, "train: give at least one image folder or list file")
        check(
            self.resolution % 8 == 0 and self.resolution >= 8,
            f"resolution={self.resolution} must be a positive multiple of 8",
        )
        check(self.num_workers >= 0, f"num_workers={self.num_workers} must be >= 0")
        check(self.cache_mb >= 0, f"cache_mb={self.cache_mb} must be >= 0 (0: no cache)")
        check(
            (self.val_lr is None) == (self.val_hr is None),
            "val_lr and val_hr go together: set both or neither",
        )
        check(self.val_max_images >= 1, f"val_max_images={self.val_max_images} must be >= 1")


@dataclass(frozen=True)
class OptimizerConfig:
    """One AdamW (and one LR schedule) per trainable group; reference stage 1: lr 5e-5, constant."""

    learning_rate: float = 5e-5
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
    ] = "constant"
    lr_warmup_steps: int = 0  # the reference passes 500, which "constant" ignores
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit: less optimizer memory on GPU

    def __post_init__(self) -> None:
        check(self.learning_rate > 0, f"learning_rate={self.learning_rate} must be > 0")
        check(self.lr_warmup_steps >= 0, f"lr_warmup_steps={self.lr_warmup_steps} must be >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            check(0.0 <= v < 1.0, f"{name}={v} must be in [0, 1)")
        check(self.adam_weight_decay >= 0, f"adam_weight_decay={self.adam_weight_decay} must be >= 0")
        check(self.adam_epsilon > 0, f"adam_epsilon={self.adam_epsilon} must be > 0")


@dataclass(frozen=True)
class LoopConfig:
    """The accelerate loop (:mod:`ccsr.training.loop`). Reference stage 1: 4 GPUs x 4 x accumulation 6 = 96."""

    output_dir: str
    seed: int = 0
    max_train_steps: int = 20000  # optimizer updates
    batch_size: int = 4  # per process
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0  # 0 disables clipping
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None  # keep only the newest N checkpoints
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    validation_steps: int = 500  # needs data.val_lr / val_hr
    log_with: Literal["tensorboard", "none"] = "tensorboard"
    use_ema: bool = False
    ema_decay: float = 0.9999
    cpu: bool = False  # force CPU even when a GPU is visible (tests, debugging)

    def __post_init__(self) -> None:
        for name in (
            "max_train_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "validation_steps",
        ):
            v = getattr(self, name)
            check(v >= 1, f"{name}={v} must be >= 1")
        check(
            self.max_grad_norm >= 0, f"max_grad_norm={self.max_grad_norm} must be >= 0 (0 disables clipping)"
        )
        check(
            self.checkpoints_total_limit is None or self.checkpoints_total_limit >= 1,
            f"checkpoints_total_limit={self.checkpoints_total_limit} must be >= 1 or null",
        )
        check(0.0 < self.ema_decay < 1.0, f"ema_decay={self.ema_decay} must be in (0, 1)")
