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

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ccsr.config import LoopConfig, OptimizerConfig, config_to_dict, save_config
from ccsr.training.checkpoint import Progress, resolve_resume, save_checkpoint

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
                module.enable_gradient_checkpointing()


def weight_dtype(accelerator) -> torch.dtype:
    """Dtype for frozen modules: the mixed-precision dtype (the reference casts UNet/VAE/text encoder to it)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch)``: the same in every process
    (accelerate shards the batches) and the same after a resume.

    ``epoch_in_index``: yield ``epoch * n + i`` instead of ``i``, for datasets that read their epoch
    from the index (``EPOCH_IN_INDEX = True``): their DataLoader workers can then live across epochs
    (a dataset copy inside a worker never sees ``set_epoch``).
    """

    def __init__(self, n: int, seed: int, epoch_in_index: bool = False) -> None:
        self.n, self.seed, self.epoch, self.epoch_in_index = n, seed, 0, epoch_in_index

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * self.n if self.epoch_in_index else 0
        perm = np.random.default_rng((self.seed, self.epoch)).permutation(self.n) + offset
        return iter(perm.tolist())

    def __len__(self) -> int:
        return self.n


@dataclass
class TrainResult:
    global_step: int
    history: list[dict[str, float]]  # one entry per micro-batch of this run: step, losses, logs
    export_dir: Path | None


def _make_optimizer(params: list[nn.Parameter], optim: OptimizerConfig) -> torch.optim.Optimizer:
    kwargs = dict(
        lr=optim.learning_rate,
        betas=(optim.adam_beta1, optim.adam_beta2),
        weight_decay=optim.adam_weight_decay,
        eps=optim.adam_epsilon,
    )
    if optim.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ImportError(
                "optimizer.use_8bit_adam=true needs bitsandbytes: pip install bitsandbytes (or set it to false)"
            ) from e
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """Tensorboard hparams accept only scalars and strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _save_images(images: dict[str, torch.Tensor], folder: Path) -> None:
    from ccsr.image import tensor_to_pil

    folder.mkdir(parents=True, exist_ok=True)
    for name, batch in images.items():
        for i, im in enumerate(tensor_to_pil(batch)):
            im.save(folder / f"{i:02d}_{name}.png")


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
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    out = Path(cfg.output_dir)
    resume = resolve_resume(out, cfg.resume_from_checkpoint)  # before any work: fail fast
    # accelerate keeps precision and accumulation in process-wide singletons that refuse new values;
    # this run owns them (the distributed state stays), so one process may train twice (notebooks, tests).
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        # Accumulation runs across epoch ends, so step N always means N * accumulation micro-batches.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        log_with=None if cfg.log_with == "none" else cfg.log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        cpu=cfg.cpu,
    )
    # Each process draws its own noise and degradations; data order comes from EpochSampler.
    set_seed(cfg.seed, device_specific=True)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if config is not None:
            save_config(config, out / "config.yaml")

    if cfg.gradient_checkpointing:
        step.enable_gradient_checkpointing()
    modules = step.modules()
    groups = step.optimizer_groups()
    if not groups or any(len(p) == 0 for p in groups.values()):
        raise ValueError(
            f"optimizer_groups() must give a non-empty parameter list per key, got sizes "
            f"{ {k: len(v) for k, v in groups.items()} }"
        )
    optimizers = {k: _make_optimizer(p, optim) for k, p in groups.items()}
    # accelerate steps a prepared scheduler once per process per update, hence the factor.
    n_proc = accelerator.num_processes
    schedulers = {
        k: get_scheduler(
            optim.lr_scheduler,
            opt,
            num_warmup_steps=optim.lr_warmup_steps * n_proc,
            num_training_steps=cfg.max_train_steps * n_proc,
        )
        for k, opt in optimizers.items()
    }
    # Workers that outlive an epoch keep their state (decoded-image cache) and skip a respawn per epoch,
    # which costs seconds when an epoch is a handful of steps; only for datasets whose epoch is in the index.
    epoch_in_index = bool(getattr(train_dataset, "EPOCH_IN_INDEX", False))
    sampler = EpochSampler(len(train_dataset), cfg.seed, epoch_in_index)
    loader = DataLoader(
        train_dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=epoch_in_index and num_workers > 0,
        # Own generator: worker seeding must not consume the global RNG that resume restores.
        generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=accelerator.device.type == "cuda",
    )
    names = list(modules)
    prepared = accelerator.prepare(*modules.values(), *optimizers.values(), *schedulers.values(), loader)
    prepared = list(prepared)
    prep_modules = dict(zip(names, prepared[: len(names)]))
    optimizers = dict(zip(optimizers, prepared[len(names) : len(names) + len(optimizers)]))
    schedulers = dict(zip(schedulers, prepared[len(names) + len(optimizers) : -1]))
    loader = prepared[-1]
    step.bind(accelerator, prep_modules)
    if len(loader) == 0:
        raise ValueError(
            f"{len(train_dataset)} training images give no full batch of {cfg.batch_size} per process "
            f"on {n_proc} process(es); add images or lower train.batch_size"
        )

    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    emas = {}
    if cfg.use_ema:
        from diffusers.training_utils import EMAModel

        for k, params in groups.items():
            emas[k] = EMAModel(params, decay=cfg.ema_decay)
            emas[k].to(accelerator.device)
            accelerator.register_for_checkpointing(emas[k])

    if accelerator.is_main_process and cfg.log_with != "none":
        accelerator.init_trackers(
            project_name, config=_flat(config_to_dict(config)) if config is not None else None
        )

    if resume is not None:
        accelerator.load_state(str(resume))
        logger.info("resumed from %s at step %d", resume, progress.global_step)
    global_step = progress.global_step
    accum = cfg.gradient_accumulation_steps
    epoch, skip = divmod(global_step * accum, len(loader))
    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []  # micro-batches of the update in progress
    metrics_file = out / "logs" / "metrics.jsonl"

    def swap_ema(fn):
        for k, ema in emas.items():
            ema.store(groups[k])
            ema.copy_to(groups[k])
        try:
            return fn()
        finally:
            for k, ema in emas.items():
                ema.restore(groups[k])

    def run_validation() -> None:
        if val_dataset is None or not accelerator.is_main_process:
            return
        vloader = DataLoader(val_dataset, batch_size=min(val_max_images, len(val_dataset)), shuffle=False)
        batch = next(iter(vloader))
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            images = swap_ema(lambda: step.validate(batch))
        _save_images(images, out / "validation" / f"step-{global_step:07d}")
        if cfg.log_with == "tensorboard":
            writer = accelerator.get_tracker("tensorboard", unwrap=True)
            for name, im in images.items():
                writer.add_images(f"validation/{name}", im.detach().float().clamp(0, 1).cpu(), global_step)

    done = global_step >= cfg.max_train_steps
    tick = time.perf_counter()
    while not done:
        # The prepared loader re-applies its own epoch counter to the sampler on every __iter__.
        loader.set_epoch(epoch)
        if hasattr(train_dataset, "set_epoch"):
            train_dataset.set_epoch(epoch)
        if skip:
            from accelerate import skip_first_batches

            batches = skip_first_batches(loader, skip)
        else:
            batches = loader
        for batch in batches:
            with accelerator.accumulate(*prep_modules.values()):
                with accelerator.autocast():
                    result = step(batch, global_step)
                if list(result.losses) != list(optimizers):
                    raise ValueError(
                        f"step returned losses {list(result.losses)} but optimizers are {list(optimizers)}"
                    )
                for k, loss in result.losses.items():
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(groups[k], cfg.max_grad_norm)
                    optimizers[k].step()
                    schedulers[k].step()
                    optimizers[k].zero_grad(set_to_none=True)
            record = {
                "step": global_step + 1,
                **{f"loss/{k}": float(v.detach()) for k, v in result.losses.items()},
            }
            record.update(result.logs)
            history.append(record)
            window.append(record)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.global_step = global_step
            for k, ema in emas.items():
                ema.step(groups[k])
            # Logged values are means over the update's micro-batches (this process's).
            logs = {k: sum(r[k] for r in window) / len(window) for k in record if k != "step"}
            logs["step"], window = global_step, []
            logs.update({f"lr/{k}": s.get_last_lr()[0] for k, s in schedulers.items()})
            now = time.perf_counter()
            logs["time/step_s"], tick = now - tick, now  # wall time per update, checkpoints included
            accelerator.log({k: v for k, v in logs.items() if k != "step"}, step=global_step)
            if accelerator.is_main_process:
                metrics_file.parent.mkdir(parents=True, exist_ok=True)
                with metrics_file.open("a") as f:
                    f.write(json.dumps(logs) + "\n")
                if not all(math.isfinite(v) for k, v in logs.items() if k.startswith("loss/")):
                    logger.warning("step %d: non-finite loss %s", global_step, logs)
            last = global_step >= cfg.max_train_steps
            if global_step % cfg.validation_steps == 0 or last:
                run_validation()
            if global_step % cfg.checkpointing_steps == 0 or last:
                save_checkpoint(accelerator, out, global_step, cfg.checkpoints_total_limit)
            if last:
                done = True
                break
        epoch, skip = epoch + 1, 0

    accelerator.wait_for_everyone()
    export_dir = None
    if accelerator.is_main_process:
        export_dir = swap_ema(lambda: step.export(out))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(global_step, history, export_dir)


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
    return train(
        step,
        train_data,
        cfg.train,
        cfg.optimizer,
        num_workers=cfg.data.num_workers,
        val_dataset=val_data,
        val_max_images=cfg.data.val_max_images,
        config=cfg,
        project_name=project_name,
    )
