"""The models shipped inside the package, by name (no heavy imports: the CLI resolves names early).

``tiny`` is ccsr-tiny, the small CCSR model trained from scratch (``ccsr/assets/ccsr-tiny.md``). Every
entry point that takes a model folder accepts these names: ``ccsr upscale --model tiny`` and
``CCSRPipeline.from_pretrained("tiny")`` alike.
"""

from __future__ import annotations

import os
from pathlib import Path

#: ``tiny``: the small model shipped inside the package (single-folder layout).
TINY_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "ccsr-tiny"
SHIPPED_MODELS: dict[str, Path] = {"tiny": TINY_MODEL_DIR}


def resolve_model_root(model: str | os.PathLike) -> str:
    """A shipped model's name -> its folder; anything else (a folder or a Hub repo id) is passed on."""
    folder = SHIPPED_MODELS.get(str(model))
    if folder is None:
        return str(model)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"the shipped model {model!r} is not part of this installation (expected {folder}); "
            "pass a folder or Hub repo id of CCSR-v2 weights instead"
        )
    return str(folder)
