"""The one training loop, shared by every stage: accelerate does devices, precision and processes.

A stage is a :class:`TrainStep` object; the loop knows nothing about diffusion. The contract:

* ``modules() -> dict[str, nn.Module]``: every module accelerate must prepare and checkpoint
  (trainable, or holding state that must be saved). Frozen backbones the step only *uses*
  (UNet, VAE, text encoder) stay out: the step moves them itself in :meth:`TrainStep.bind`.
* ``optimizer_groups() -> dict[str, list[nn.Parameter]]``: one AdamW and one LR schedule per key,
  e.g. ``{"controlnet": [...]}`` or ``{"generator": [...], "discriminator": [...]}``.
* ``__call__(batch, global_step) -> StepOutput``: ``losses`` holds one scalar per optimizer key,
  **in the same order**; the loop back-propagates them in that order, each followed by its own
  gradient clip, optimizer step, LR-schedule step and ``zero_grad``. A GAN step freezes the
  discriminator (``requires_grad_(False)``) while it builds the generator loss and detaches the
  generator output in the discriminator loss, so each loss only reaches its own parameters.
  ``batch`` is already on ``accelerator.device``; the call runs under ``accelerator.autocast()``.
* ``export(output_dir) -> Path``: write the release-layout artefact (stage 1: ``controlnet/``).
  Called on the main process at the end, with EMA weights swapped in when EMA is on.
* ``validate(batch) -> dict[str, Tensor]``: named image batches ``(B, 3, H, W)`` in ``[0, 1]``,
  logged to tensorboard and written as PNGs; main process, ``torch.no_grad``, EMA weights.
* ``bind(accelerator, prepared)``: called once after ``accelerator.prepare``. The default stores
  the accelerator and sets each prepared (possibly DDP-wrapped) module as an attribute of the
  same name, so ``__call__`` must use ``self.<name>`` (e.g. ``self.controlnet``); use
  :meth:`TrainStep.unwrap` to reach the bare module (export, validation). Override it to move frozen
  modules to ``accelerator.device`` in :func:`weight_dtype` (call ``super().bind`` first).

Resume (``train.resume_from_checkpoint: latest``) restores models, optimizers, schedulers, EMA, the
python/numpy/torch RNG states and the data position: the sampler's order and every crop are a pure
function of (seed, epoch, index), and the loop skips the batches already seen in the epoch, so a
resumed run replays an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ccsr.config import LoopConfig, OptimizerConfig, config_to_dict, save_config
from ccsr.training.checkpoint import Progress, resolve_resume, save_checkpoint
from ccsr.training.session import EpochSampler, Session, flat_hparams, make_accelerator, open_session

if TYPE_CHECKING:
    from diffusers import ModelMixin

__all__ = [
    "EpochSampler",
    "StepOutput",
    "TrainResult",
    "TrainStep",
    "train",
    "train_sr_stage",
    "weight_dtype",
]

logger = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """What a step returns: ``losses`` (one scalar tensor per optimizer key, in order) and extra ``logs``."""

    losses: dict[str, torch.Tensor]
    logs: dict[str, float] = field(default_factory=dict)


class TrainStep:
    """Base class of a training stage; see the module docstring for the contract."""

    accelerator: Any = None

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any], global_step: int) -> StepOutput:
        raise NotImplementedError

    def export(self, output_dir: str | os.PathLike) -> Path:
        raise NotImplementedError

    def validate(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def bind(self, accelerator, prepared: dict[str, nn.Module]) -> None:
        self.accelerator = accelerator
        for name, module in prepared.items():
            setattr(self, name, module)

    def unwrap(self, name: str) -> nn.Module:
        """The bare module behind a prepared (DDP / compiled) one."""
        module = getattr(self, name)
        return self.accelerator.unwrap_model(module) if self.accelerator is not None else module

    def enable_gradient_checkpointing(self) -> None:
        """Trade compute for memory; the default covers :meth:`modules`, a step adds frozen backbones."""
        for module in self.modules().values():
            if getattr(module, "_supports_gradient_checkpointing", False):
                model: ModelMixin = module  # the flag of diffusers models
                model.enable_gradient_checkpointing()


def weight_dtype(accelerator) -> torch.dtype:
    """Dtype for frozen modules: the mixed-precision dtype (the reference casts UNet/VAE/text encoder to it)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


@dataclass
class TrainResult:
    global_step: int
    history: list[dict[str, float]]  # one entry per micro-batch of this run: step, losses, logs
    export_dir: Path | None


def train(
    step: TrainStep,
    train_dataset: Dataset,
    cfg: LoopConfig,
    optim: OptimizerConfig,
    *,
    num_workers: int = 0,
    val_dataset: Dataset | None = None,
    val_max_images: int = 4,
    config: Any = None,
    project_name: str = "ccsr",
) -> TrainResult:
    """Train ``step`` for ``cfg.max_train_steps`` optimizer updates, then export it.

    ``train_dataset`` items are dicts of tensors; an optional ``set_epoch(epoch)`` method lets it draw
    per-epoch crops deterministically. ``config`` (a config dataclass) is written to
    ``output_dir/config.yaml`` and logged as hyper-parameters.
    """
    from accelerate.utils import set_seed

    out = Path(cfg.output_dir)
    resume = resolve_resume(out, cfg.resume_from_checkpoint)  # before any work: fail fast
    accelerator = make_accelerator(cfg, out)
    # Each process draws its own noise and degradations; data order comes from EpochSampler.
    set_seed(cfg.seed, device_specific=True)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if config is not None:
            save_config(config, out / "config.yaml")
    if cfg.gradient_checkpointing:
        step.enable_gradient_checkpointing()
    progress = Progress()
    session = open_session(step, train_dataset, cfg, optim, num_workers, accelerator, progress)
    if accelerator.is_main_process and cfg.log_with != "none":
        hparams = flat_hparams(config_to_dict(config)) if config is not None else None
        accelerator.init_trackers(project_name, config=hparams)
    if resume is not None:
        accelerator.load_state(str(resume))
        logger.info("resumed from %s at step %d", resume, progress.global_step)

    history = _run_updates(session, train_dataset, cfg, progress, out, val_dataset, val_max_images)
    export_dir = _export(session, out)
    return TrainResult(progress.global_step, history, export_dir)


def _run_updates(
    session: Session,
    train_dataset: Dataset,
    cfg: LoopConfig,
    progress: Progress,
    out: Path,
    val_dataset: Dataset | None,
    val_max_images: int,
) -> list[dict[str, float]]:
    """The optimizer updates after ``progress.global_step`` up to ``cfg.max_train_steps``, validating and
    checkpointing on their schedules and after the last one; returns one history entry per micro-batch."""
    history: list[dict[str, float]] = []
    global_step = progress.global_step
    done = global_step >= cfg.max_train_steps
    accum = cfg.gradient_accumulation_steps
    session.tick = time.perf_counter()
    for batch in () if done else _remaining_batches(session.loader, train_dataset, global_step, accum):
        history.append(session.micro_step(batch, global_step))
        if not session.accelerator.sync_gradients:
            continue
        global_step = progress.global_step = global_step + 1
        session.finish_update(global_step, out / "logs" / "metrics.jsonl")
        last = global_step >= cfg.max_train_steps
        if global_step % cfg.validation_steps == 0 or last:
            session.validate(val_dataset, val_max_images, out / "validation", global_step, cfg.log_with)
        if global_step % cfg.checkpointing_steps == 0 or last:
            save_checkpoint(session.accelerator, out, global_step, cfg.checkpoints_total_limit)
        if last:
            break
    return history


def _export(session: Session, out: Path) -> Path | None:
    """The step's export (main process, EMA weights swapped in); every process waits for it."""
    accelerator = session.accelerator
    accelerator.wait_for_everyone()
    export_dir = None
    if accelerator.is_main_process:
        with session.ema_weights():
            export_dir = session.step.export(out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return export_dir


def _remaining_batches(loader, dataset: Dataset, global_step: int, accumulation: int) -> Iterator[dict]:
    """The batches after ``global_step`` updates, epoch after epoch without end: the first epoch skips
    the batches a resumed run has already seen, and every epoch sets the sampler's and the dataset's
    epoch (the prepared loader re-applies its own epoch counter to the sampler on every ``__iter__``)."""
    epoch, skip = divmod(global_step * accumulation, len(loader))
    while True:
        loader.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        if skip:
            from accelerate import skip_first_batches

            yield from skip_first_batches(loader, skip)
        else:
            yield from loader
        epoch, skip = epoch + 1, 0


def train_sr_stage(build_step: Callable[[], TrainStep], cfg: Any, project_name: str) -> TrainResult:
    """Stages 1 and 2: seed, build the step, HQ training images and optional paired validation
    folders from ``cfg.data``, then :func:`train` with ``cfg.train`` / ``cfg.optimizer``."""
    from accelerate.utils import set_seed

    from ccsr.data.datasets import HQImageDataset, PairedImageDataset

    set_seed(cfg.train.seed)  # the same initial weights in every process and on every restart
    step = build_step()
    train_data = HQImageDataset.from_config(cfg.data, cfg.train.seed)
    val_data = None
    if cfg.data.val_lr is not None:
        val_data = PairedImageDataset(cfg.data.val_lr, cfg.data.val_hr, crop=cfg.data.resolution)
    return train_configured(step, train_data, cfg, val_data, project_name, cfg.data.val_max_images)


def train_configured(
    step: TrainStep,
    data: Dataset,
    cfg: Any,
    val_dataset: Dataset | None,
    project_name: str,
    val_max_images: int = 4,
) -> TrainResult:
    """:func:`train` with the parts of a stage config every stage shares: ``cfg.train``,
    ``cfg.optimizer``, ``cfg.data.num_workers``, and ``cfg`` itself as the recorded config."""
    return train(
        step,
        data,
        cfg.train,
        cfg.optimizer,
        num_workers=cfg.data.num_workers,
        val_dataset=val_dataset,
        val_max_images=val_max_images,
        config=cfg,
        project_name=project_name,
    )
