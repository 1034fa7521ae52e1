"""Checkpoints of the training loop: ``output_dir/checkpoints/checkpoint-N`` written by
``accelerator.save_state`` (models, optimizers, LR schedules, RNG states, registered objects).

A checkpoint is written to a hidden ``.checkpoint-N.tmp`` folder and renamed when complete, so a run
killed while saving never leaves a checkpoint that looks usable; ``latest`` only sees complete ones.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"


class Progress:
    """The loop's own checkpointed state (registered with ``accelerator.register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.global_step = 0

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.global_step = int(state["global_step"])


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    found = [p for p in found if p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def resolve_resume(output_dir: str | os.PathLike, resume_from: str | None) -> Path | None:
    """The checkpoint to resume from: ``None`` (fresh run), ``"latest"`` or a folder.

    A fresh run refuses an output folder that already holds checkpoints: it would overwrite them.
    """
    existing = list_checkpoints(output_dir)
    if resume_from is None:
        if existing:
            raise FileExistsError(
                f"{Path(output_dir) / CHECKPOINT_DIR} holds checkpoints of an earlier run (up to {existing[-1].name}); "
                "continue it with --resume latest (train.resume_from_checkpoint=latest), or choose another "
                "train.output_dir"
            )
        return None
    if resume_from == "latest":
        if not existing:
            logger.warning(
                "resume latest: no checkpoint in %s; starting from scratch", Path(output_dir) / CHECKPOINT_DIR
            )
            return None
        return existing[-1]
    path = Path(resume_from)
    if not (path / "random_states_0.pkl").is_file():
        raise FileNotFoundError(
            f"resume_from_checkpoint={path}: not a checkpoint folder (no random_states_0.pkl); "
            f"use 'latest' or one of {[str(p) for p in existing]}"
        )
    return path


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, global_step: int, total_limit: int | None
) -> Path:
    """Save the full training state as ``checkpoint-<global_step>``; all processes must call it."""
    root = Path(output_dir) / CHECKPOINT_DIR
    final, tmp = root / f"{CHECKPOINT_PREFIX}{global_step}", root / f".{CHECKPOINT_PREFIX}{global_step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # a later run of the same step (after a resume) supersedes it
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
