"""CCSR-v2's non-uniform, truncated timestep schedule as a pure function.

No torch, no diffusers: the scheduler's own timestep grid comes in as a list of ints, so this
module can be tested (and reasoned about) on its own.

The reference (`pipelines/pipeline_ccsr.py` of CCSR-v2.0) does three things with its grid of
``N`` DDPM timesteps (``leading`` spacing, ``steps_offset=1``: for N=6 ``[831, 665, 499, 333, 167, 1]``):

1. an *information-extraction* step at ``start_timestep`` (999), started from the noised LR latent,
   whose x0 prediction is re-noised to ``tau = grid[-round(N * t_max)]``;
2. a truncated ancestral DDPM loop over ``grid[-round(N * t_max):]``, cut short by
   ``round(N * t_min)`` steps when ``t_min > 0``;
3. when ``t_min > 0``, the x0 prediction at the last loop timestep is the output (the DDPM step of
   that iteration is discarded); when ``N == 1`` the loop is skipped and the x0 of step 1 is the output.

Rounding is Python's ``round`` (half to even), exactly as the reference: N=5, t_min=0.5 drops
``round(2.5) == 2`` steps. Combinations on which the reference crashes (an empty loop whose x0 is
requested, ``t_max == 1`` with N == 1) raise :class:`ValueError` naming the values instead.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The paper's constants (docs/algorithm.md §1.1, §8.5). The reference spells t_max both 0.6666 and 0.6667;
#: both give the same grids for every N up to 1000.
DEFAULT_T_MAX = 0.6667
DEFAULT_START_TIMESTEP = 999


@dataclass(frozen=True)
class CCSRSchedule:
    """What the sampler evaluates, in order.

    Attributes:
        num_inference_steps: N, the length of the scheduler's timestep grid (the reference's knob).
        start_timestep: timestep of the extraction step, or ``None`` when ``t_max == 1`` skips it.
        tau: timestep the extraction step's x0 is re-noised to; ``None`` when there is no loop
            after the extraction step.
        loop: timesteps the truncated DDPM loop evaluates, strictly descending.
        final_x0: ``True``: decode the x0 predicted at ``loop[-1]``; ``False``: decode the output
            of the last DDPM step (or, with an empty loop, the extraction step's x0).
    """

    num_inference_steps: int
    start_timestep: int | None
    tau: int | None
    loop: tuple[int, ...]
    final_x0: bool

    @property
    def timesteps(self) -> tuple[int, ...]:
        """Every timestep at which the denoiser (ControlNet + UNet) is evaluated, in order."""
        first = () if self.start_timestep is None else (self.start_timestep,)
        return first + self.loop

    @property
    def num_network_evals(self) -> int:
        """Number of denoiser evaluations (a CFG pair counts once: it runs as one batch)."""
        return len(self.timesteps)


def leading_timesteps(
    num_inference_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1
) -> list[int]:
    """The DDPM ``leading`` grid that SD-2.1-base's scheduler config produces.

    Equal to ``DDPMScheduler.set_timesteps(N).timesteps`` for ``timestep_spacing="leading"``;
    kept here so that training and tests need no scheduler object.
    """
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} must be between 1 and num_train_timesteps={num_train_timesteps}"
        )
    ratio = num_train_timesteps // num_inference_steps
    return [i * ratio + steps_offset for i in reversed(range(num_inference_steps))]


def make_schedule(
    base_timesteps: list[int] | tuple[int, ...],
    t_max: float = DEFAULT_T_MAX,
    t_min: float = 0.0,
    start_timestep: int = DEFAULT_START_TIMESTEP,
) -> CCSRSchedule:
    """Apply CCSR-v2's truncation to a scheduler's timestep grid.

    Args:
        base_timesteps: the scheduler's grid after ``set_timesteps(N)``, descending.
        t_max: fraction of the grid kept after the extraction step; 1 skips the extraction step.
        t_min: fraction of the grid cut from the end; > 0 makes the output the x0 prediction at
            the last kept timestep.
        start_timestep: timestep of the extraction step (999 in every published setting).

    Example: ``make_schedule([831, 665, 499, 333, 167, 1], 0.6667, 0.5).timesteps == (999, 499)``.
    """
    grid = [int(t) for t in base_timesteps]
    n = len(grid)
    _check_schedule_args(grid, t_max, t_min, start_timestep)
    what = f"num_inference_steps={n}, t_max={t_max}, t_min={t_min}"
    start, tau, loop = _kept_steps(grid, t_max, start_timestep, what)

    final_x0 = t_min > 0
    if final_x0:
        n_drop = round(n * t_min)
        # `grid[:-0]` is empty in Python; the reference slices exactly like this.
        loop = loop[:-n_drop] if n_drop > 0 else []
        if not loop:
            raise ValueError(
                f"{what}: the truncated loop is empty (round(N * t_min) = {n_drop} of the kept steps are cut), "
                "so there is no x0 to read out at t_min. Use t_min=0, a larger N, or a smaller t_min "
                "(e.g. N=6, t_max=0.6667, t_min=0.5 for two steps)."
            )
        tau = loop[0] if start is not None else None
    return CCSRSchedule(n, start, tau, tuple(loop), final_x0)


def _check_schedule_args(grid: list[int], t_max: float, t_min: float, start_timestep: int) -> None:
    if not grid:
        raise ValueError("base_timesteps is empty: call scheduler.set_timesteps(N) with N >= 1 first")
    if any(a <= b for a, b in zip(grid, grid[1:])):
        raise ValueError(f"base_timesteps must be strictly descending, got {grid}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if not 0 < start_timestep:
        raise ValueError(f"start_timestep={start_timestep} must be positive")


def _kept_steps(
    grid: list[int], t_max: float, start_timestep: int, what: str
) -> tuple[int | None, int | None, list[int]]:
    """``(start, tau, loop)`` of :class:`CCSRSchedule` before the ``t_min`` truncation: the extraction
    step's timestep (``None`` when ``t_max == 1`` skips it), the re-noising timestep and the grid kept."""
    n = len(grid)
    if t_max == 1.0:
        # The reference skips the extraction step and runs the whole grid from the noised start.
        if n == 1:
            raise ValueError(
                f"{what}: t_max=1 skips the extraction step, so N=1 leaves nothing to run; use N >= 2"
            )
        return None, None, list(grid)
    n_keep = round(n * t_max)
    if n_keep < 1:
        raise ValueError(
            f"{what}: round(N * t_max) = {n_keep} keeps no timestep of the grid; raise t_max or N"
        )
    if grid[-n_keep] >= start_timestep:
        raise ValueError(
            f"{what}: the re-noising timestep {grid[-n_keep]} is not below start_timestep={start_timestep}"
        )
    # N == 1 is the one-step model: the extraction step's x0 is the output.
    loop = [] if n == 1 else grid[-n_keep:]
    return start_timestep, (loop[0] if loop else None), loop


@dataclass(frozen=True)
class StepPreset:
    """The reference's knobs that a user-facing step count maps to."""

    num_inference_steps: int
    t_max: float
    t_min: float
    guidance_scale: float


def preset_for_steps(steps: int) -> StepPreset:
    """Map a number of denoiser evaluations to the reference's schedule knobs.

    * ``1``: the paper's CCSR-S1: N=1, guidance 1.0 (one evaluation at t=999).
    * ``2``: the paper's CCSR-S2: N=6, t_max=0.6667, t_min=0.5, guidance 4.5 (t=999, then 499).
    * ``k >= 3``: the S2 recipe with its truncated interval subdivided: N=6(k-1), same t_max,
      t_min and guidance, so the loop holds k-1 timesteps between about 600 and 500 and the output
      is still the x0 at t~500 (down to ~420 for counts near 30, because the leading grid floors
      1000/N). E.g. 3 -> (999, 582, 499), 4 -> (999, 606, 551, 496).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer (the number of denoiser evaluations)")
    if steps == 1:
        return StepPreset(1, DEFAULT_T_MAX, 0.0, 1.0)
    n = 6 * (steps - 1)
    if n > 1000:
        raise ValueError(f"steps={steps} is too many: at most 167 evaluations fit the 1000-step grid")
    return StepPreset(n, DEFAULT_T_MAX, 0.5, 4.5)


def sample_train_timesteps_upper(t_max: float, num_train_timesteps: int = 1000) -> int:
    """Exclusive upper bound of stage 1's truncated timesteps: ``round(1000 * t_max)`` (667)."""
    if not 0.0 < t_max <= 1.0:
        raise ValueError(f"t_max={t_max} must be in (0, 1]")
    return round(num_train_timesteps * t_max)
