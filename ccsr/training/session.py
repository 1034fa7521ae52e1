"""What one training run holds once accelerate has prepared it, and the steps :func:`ccsr.training.loop.train`
takes with it: build (accelerator, optimizers, schedules, data order, EMA), one micro-batch, one update's
log record, validation. The loop itself reads as a list of these steps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ccsr.config import LoopConfig, OptimizerConfig

if TYPE_CHECKING:
    from ccsr.training.loop import TrainStep

logger = logging.getLogger(__name__)


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


def make_accelerator(cfg: LoopConfig, out: Path) -> Any:
    """An ``Accelerator`` owning this run's precision and accumulation settings."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    # accelerate keeps precision and accumulation in process-wide singletons that refuse new values;
    # this run owns them (the distributed state stays), so one process may train twice (notebooks, tests).
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        # Accumulation runs across epoch ends, so step N always means N * accumulation micro-batches.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        log_with=None if cfg.log_with == "none" else cfg.log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        cpu=cfg.cpu,
    )


def make_optimizer(params: list[nn.Parameter], optim: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW (or bitsandbytes' 8-bit AdamW) with the config's hyper-parameters."""
    kwargs: dict[str, Any] = dict(
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


def _parameter_groups(step: TrainStep) -> dict[str, list[nn.Parameter]]:
    groups = step.optimizer_groups()
    if not groups or any(len(p) == 0 for p in groups.values()):
        raise ValueError(
            f"optimizer_groups() must give a non-empty parameter list per key, got sizes "
            f"{ {k: len(v) for k, v in groups.items()} }"
        )
    return groups


def _make_loader(dataset: Dataset, cfg: LoopConfig, num_workers: int, device_type: str) -> DataLoader:
    # Workers that outlive an epoch keep their state (decoded-image cache) and skip a respawn per epoch,
    # which costs seconds when an epoch is a handful of steps; only for datasets whose epoch is in the index.
    epoch_in_index = bool(getattr(dataset, "EPOCH_IN_INDEX", False))
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=EpochSampler(len(dataset), cfg.seed, epoch_in_index),  # type: ignore[arg-type]
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=epoch_in_index and num_workers > 0,
        # Own generator: worker seeding must not consume the global RNG that resume restores.
        generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=device_type == "cuda",
    )


@dataclass
class Session:
    """One run's prepared objects. ``optimizers`` and ``schedulers`` share the keys of ``groups``."""

    accelerator: Any
    step: TrainStep
    groups: dict[str, list[nn.Parameter]]
    modules: dict[str, nn.Module]
    optimizers: dict[str, Any]
    schedulers: dict[str, Any]
    loader: Any
    max_grad_norm: float = 0.0  # 0: no clipping
    emas: dict[str, Any] = field(default_factory=dict)
    window: list[dict[str, float]] = field(default_factory=list)  # micro-batches of the update in progress
    tick: float = field(default_factory=time.perf_counter)

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def micro_step(self, batch: dict[str, Any], global_step: int) -> dict[str, float]:
        """Forward, backward and (on a sync step) clip, optimizer and schedule step for every loss, in the
        step's order; returns the micro-batch's record (``step``, ``loss/<key>``, the step's logs)."""
        acc = self.accelerator
        with acc.accumulate(*self.modules.values()):
            with acc.autocast():
                result = self.step(batch, global_step)
            if list(result.losses) != list(self.optimizers):
                raise ValueError(
                    f"step returned losses {list(result.losses)} but optimizers are {list(self.optimizers)}"
                )
            for k, loss in result.losses.items():
                acc.backward(loss)
                if acc.sync_gradients and self.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.groups[k], self.max_grad_norm)
                self.optimizers[k].step()
                self.schedulers[k].step()
                self.optimizers[k].zero_grad(set_to_none=True)
        record = {
            "step": global_step + 1,
            **{f"loss/{k}": float(v.detach()) for k, v in result.losses.items()},
        }
        record.update(result.logs)
        self.window.append(record)
        return record

    def finish_update(self, global_step: int, metrics_file: Path) -> None:
        """After update ``global_step``: EMA step, then log the means over its micro-batches (this
        process's), learning rates and wall time per update to the trackers and ``metrics.jsonl``."""
        for k, ema in self.emas.items():
            ema.step(self.groups[k])
        keys = [k for k in self.window[-1] if k != "step"]
        logs = {k: sum(r[k] for r in self.window) / len(self.window) for k in keys}
        logs["step"], self.window = global_step, []
        logs.update({f"lr/{k}": s.get_last_lr()[0] for k, s in self.schedulers.items()})
        now = time.perf_counter()
        logs["time/step_s"], self.tick = now - self.tick, now  # checkpoints included
        self.accelerator.log({k: v for k, v in logs.items() if k != "step"}, step=global_step)
        if not self.is_main:
            return
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        with metrics_file.open("a") as f:
            f.write(json.dumps(logs) + "\n")
        if not all(math.isfinite(v) for k, v in logs.items() if k.startswith("loss/")):
            logger.warning("step %d: non-finite loss %s", global_step, logs)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """The EMA weights swapped in (no-op without EMA), the training weights restored after."""
        for k, ema in self.emas.items():
            ema.store(self.groups[k])
            ema.copy_to(self.groups[k])
        try:
            yield
        finally:
            for k, ema in self.emas.items():
                ema.restore(self.groups[k])

    def validate(
        self, dataset: Dataset | None, max_images: int, folder: Path, global_step: int, log_with: str
    ):
        """Main process only: the step's validation images, with EMA weights, as PNGs and tensorboard images."""
        if dataset is None or not self.is_main:
            return
        vloader = DataLoader(dataset, batch_size=min(max_images, len(dataset)), shuffle=False)  # type: ignore[arg-type]
        device = self.accelerator.device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(iter(vloader)).items()}
        with torch.no_grad(), self.ema_weights():
            images = self.step.validate(batch)
        save_images(images, folder / f"step-{global_step:07d}")
        if log_with == "tensorboard":
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
            for name, im in images.items():
                writer.add_images(f"validation/{name}", im.detach().float().clamp(0, 1).cpu(), global_step)


def open_session(
    step: TrainStep,
    dataset: Dataset,
    cfg: LoopConfig,
    optim: OptimizerConfig,
    num_workers: int,
    accelerator: Any,
    progress: Any,
) -> Session:
    """Optimizers and LR schedules per parameter group, the data loader, ``accelerator.prepare`` of all of
    them, ``step.bind``; then ``progress`` and (with ``cfg.use_ema``) the EMA copies registered for
    checkpointing, in that order (the order names their files in a checkpoint)."""
    from diffusers.optimization import get_scheduler

    modules, groups = step.modules(), _parameter_groups(step)
    optimizers = {k: make_optimizer(p, optim) for k, p in groups.items()}
    n_proc = accelerator.num_processes  # accelerate steps a prepared schedule once per process per update
    schedulers = {
        k: get_scheduler(
            optim.lr_scheduler,
            opt,
            num_warmup_steps=optim.lr_warmup_steps * n_proc,
            num_training_steps=cfg.max_train_steps * n_proc,
        )
        for k, opt in optimizers.items()
    }
    loader = _make_loader(dataset, cfg, num_workers, accelerator.device.type)
    prepared = list(
        accelerator.prepare(*modules.values(), *optimizers.values(), *schedulers.values(), loader)
    )
    n_mod, n_opt = len(modules), len(optimizers)
    session = Session(
        accelerator,
        step,
        groups,
        modules=dict(zip(modules, prepared[:n_mod])),
        optimizers=dict(zip(optimizers, prepared[n_mod : n_mod + n_opt])),
        schedulers=dict(zip(schedulers, prepared[n_mod + n_opt : -1])),
        loader=prepared[-1],
        max_grad_norm=cfg.max_grad_norm,
    )
    step.bind(accelerator, session.modules)
    if len(session.loader) == 0:
        raise ValueError(
            f"{len(dataset)} training images give no full batch of {cfg.batch_size} per process "  # type: ignore[arg-type]
            f"on {n_proc} process(es); add images or lower train.batch_size"
        )
    accelerator.register_for_checkpointing(progress)
    if cfg.use_ema:
        from diffusers.training_utils import EMAModel

        for k, params in groups.items():
            session.emas[k] = EMAModel(params, decay=cfg.ema_decay)
            session.emas[k].to(accelerator.device)
            accelerator.register_for_checkpointing(session.emas[k])
    return session


def flat_hparams(d: dict, prefix: str = "") -> dict[str, Any]:
    """Tensorboard hparams accept only scalars and strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_hparams(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def save_images(images: dict[str, torch.Tensor], folder: Path) -> None:
    from ccsr.image import tensor_to_pil

    folder.mkdir(parents=True, exist_ok=True)
    for name, batch in images.items():
        for i, im in enumerate(tensor_to_pil(batch)):
            im.save(folder / f"{i:02d}_{name}.png")
