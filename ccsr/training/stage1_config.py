"""``configs/train/stage1.yaml`` as strict dataclasses (loaded with :func:`ccsr.config.load_config`).

Pure: no torch, no diffusers, so ``ccsr train stage1`` reports a bad config at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ccsr.config import DataConfig, LoopConfig, ModelConfig, OptimizerConfig, check
from ccsr.schedule import DEFAULT_START_TIMESTEP, DEFAULT_T_MAX


@dataclass(frozen=True)
class Stage1Objective:
    """docs/algorithm.md §3.2: eps-MSE on t < round(1000 t_max), x0-MSE at start_timestep, x0-MSE after re-noising to
    round(1000 t_max). Weights 1:1:1 in the reference."""

    t_max: float = DEFAULT_T_MAX
    start_timestep: int = DEFAULT_START_TIMESTEP
    start_from: Literal["gt", "lr"] = "gt"  # x_T is noised from the GT latent (reference) or the LR latent
    weight_eps: float = 1.0
    weight_x0: float = 1.0
    weight_x0_renoised: float = 1.0
    weight_x0_pixel: float = 0.0  # not in the reference: L1 between the decoded one-step x0 and the GT image
    prompt: str = ""  # the reference trains with the empty caption

    def __post_init__(self) -> None:
        check(0.0 < self.t_max < 1.0, f"t_max={self.t_max} must be in (0, 1)")
        t_int = round(1000 * self.t_max)
        check(
            t_int < self.start_timestep <= 999,
            f"start_timestep={self.start_timestep} must be in (round(1000 * t_max) = {t_int}, 999]",
        )
        weights = (self.weight_eps, self.weight_x0, self.weight_x0_renoised, self.weight_x0_pixel)
        check(
            all(w >= 0 for w in weights) and sum(weights) > 0,
            f"loss weights {weights} must be >= 0, not all 0",
        )


@dataclass(frozen=True)
class Stage1Config:
    """``configs/train/stage1.yaml``: ControlNet training on the truncated objective."""

    model: ModelConfig
    data: DataConfig
    train: LoopConfig
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    objective: Stage1Objective = field(default_factory=Stage1Objective)
