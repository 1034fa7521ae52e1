"""The registry of training stages: name -> (config dataclass, run function), and each default config.

Both are ``"module:attribute"`` strings imported on use, so that ``ccsr train`` reports a bad config
before torch loads. Add a stage with one line in each table.
"""

from __future__ import annotations

import importlib
from typing import Any

STAGES: dict[str, tuple[str, str]] = {
    "stage1": ("ccsr.training.stage1_config:Stage1Config", "ccsr.training.stage1:run"),
    "autoencoder": ("ccsr.training.scratch_config:AutoencoderConfig", "ccsr.training.autoencoder:run"),
    "base": ("ccsr.training.scratch_config:BaseConfig", "ccsr.training.base:run"),
    "tiny-recipe": ("ccsr.training.scratch_config:RecipeConfig", "ccsr.training.tiny_recipe:run"),
    "stage2": ("ccsr.training.stage2_config:Stage2Config", "ccsr.training.stage2:run"),
}

#: Default config file per stage; found in the working folder first, else among the packaged configs
#: (:func:`ccsr.config.find_config_file`).
DEFAULT_CONFIGS: dict[str, str] = {
    "stage1": "configs/train/stage1.yaml",
    "stage2": "configs/train/stage2.yaml",
    "autoencoder": "configs/tiny/autoencoder.yaml",
    "base": "configs/tiny/base.yaml",
    "tiny-recipe": "configs/tiny/recipe.yaml",
}


def _resolve(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_stage(name: str) -> tuple[Any, Any]:
    """``(config class, run function)`` of a registered stage."""
    if name not in STAGES:
        raise KeyError(f"stage {name!r} is not registered in ccsr.training.stages.STAGES ({sorted(STAGES)})")
    config_cls, run_spec = STAGES[name]
    return _resolve(config_cls), _resolve(run_spec)
