"""The schedule as a pure unit: the reference's observed table (docs/algorithm.md §9) and properties."""

from __future__ import annotations

import pytest

from ccsr.schedule import leading_timesteps, make_schedule, preset_for_steps

T_MAX = 0.6667

# (N, t_min) -> (timesteps evaluated, final_x0) as observed running the reference (docs/algorithm.md §9);
# None marks the reference's UnboundLocalError crashes, which we turn into ValueError.
GOLDEN = {
    (1, 0.0): ((999,), False),
    (1, 0.3333): None,
    (1, 0.5): None,
    (2, 0.0): ((999, 1), False),
    (2, 0.3333): None,
    (2, 0.5): None,
    (3, 0.0): ((999, 334, 1), False),
    (3, 0.3333): ((999, 334), True),
    (3, 0.5): None,
    (4, 0.0): ((999, 501, 251, 1), False),
    (4, 0.3333): ((999, 501, 251), True),
    (4, 0.5): ((999, 501), True),
    (5, 0.0): ((999, 401, 201, 1), False),
    (5, 0.3333): ((999, 401), True),
    (5, 0.5): ((999, 401), True),
    (6, 0.0): ((999, 499, 333, 167, 1), False),
    (6, 0.3333): ((999, 499, 333), True),
    (6, 0.5): ((999, 499), True),
    (7, 0.0): ((999, 569, 427, 285, 143, 1), False),
    (7, 0.3333): ((999, 569, 427, 285), True),
    (7, 0.5): ((999, 569), True),
    (8, 0.0): ((999, 501, 376, 251, 126, 1), False),
    (8, 0.3333): ((999, 501, 376), True),
    (8, 0.5): ((999, 501), True),
    (9, 0.0): ((999, 556, 445, 334, 223, 112, 1), False),
    (9, 0.3333): ((999, 556, 445, 334), True),
    (9, 0.5): ((999, 556, 445), True),
    (10, 0.0): ((999, 601, 501, 401, 301, 201, 101, 1), False),
    (10, 0.3333): ((999, 601, 501, 401, 301), True),
    (10, 0.5): ((999, 601, 501), True),
    (11, 0.0): ((999, 541, 451, 361, 271, 181, 91, 1), False),
    (11, 0.3333): ((999, 541, 451, 361), True),
    (11, 0.5): ((999, 541), True),
    (12, 0.0): ((999, 582, 499, 416, 333, 250, 167, 84, 1), False),
    (12, 0.3333): ((999, 582, 499, 416, 333), True),
    (12, 0.5): ((999, 582, 499), True),
}


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_reference_table(key):
    n, t_min = key
    expected = GOLDEN[key]
    grid = leading_timesteps(n)
    if expected is None:
        with pytest.raises(ValueError, match=f"num_inference_steps={n}, t_max={T_MAX}, t_min={t_min}"):
            make_schedule(grid, T_MAX, t_min)
        return
    s = make_schedule(grid, T_MAX, t_min)
    assert (s.timesteps, s.final_x0) == expected
    assert s.num_network_evals == len(expected[0])


def test_leading_grid_matches_diffusers():
    from diffusers import DDPMScheduler

    from ccsr.models.tiny import SD21_SCHEDULER

    sched = DDPMScheduler.from_config(SD21_SCHEDULER)
    for n in (1, 2, 3, 6, 7, 10, 25, 50, 999):
        sched.set_timesteps(n)
        assert sched.timesteps.tolist() == leading_timesteps(n)


def test_t_max_0_6666_equals_0_6667():
    for n in range(1, 200):
        for t_min in (0.0, 0.5):
            try:
                a = make_schedule(leading_timesteps(n), 0.6666, t_min)
            except ValueError:
                with pytest.raises(ValueError):
                    make_schedule(leading_timesteps(n), 0.6667, t_min)
                continue
            assert a == make_schedule(leading_timesteps(n), 0.6667, t_min)


@pytest.mark.parametrize("t_max", [0.3, 0.5, 0.6667, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("t_min", [0.0, 0.1, 0.25, 0.3333, 0.5])
def test_properties(t_max, t_min):
    if t_min >= t_max:
        with pytest.raises(ValueError, match="t_min"):
            make_schedule(leading_timesteps(6), t_max, t_min)
        return
    for n in range(1, 60):
        grid = leading_timesteps(n)
        try:
            s = make_schedule(grid, t_max, t_min)
        except ValueError as e:
            assert str(n) in str(e) and str(t_max) in str(e)
            continue
        loop = list(s.loop)
        assert all(a > b for a, b in zip(loop, loop[1:])), "loop must strictly descend"
        assert set(loop) <= set(grid)
        assert s.num_network_evals == (s.start_timestep is not None) + len(loop)
        if s.tau is not None:
            assert s.tau == loop[0] and s.tau < 999
        if s.final_x0:
            assert loop, "x0 read-out needs a loop step"
        assert s.start_timestep is None or s.start_timestep == 999
        assert (s.start_timestep is None) == (t_max == 1.0)


def test_invalid_inputs_name_the_values():
    with pytest.raises(ValueError, match="t_min=0.7, t_max=0.6"):
        make_schedule(leading_timesteps(6), 0.6, 0.7)
    with pytest.raises(ValueError, match="t_max=1 skips"):
        make_schedule(leading_timesteps(1), 1.0, 0.0)
    with pytest.raises(ValueError, match="keeps no timestep"):
        make_schedule(leading_timesteps(1), 0.4, 0.0)
    with pytest.raises(ValueError, match="strictly descending"):
        make_schedule([1, 500], 0.6667, 0.0)
    with pytest.raises(ValueError):
        leading_timesteps(0)


def test_t_max_one_runs_whole_grid():
    s = make_schedule(leading_timesteps(4), 1.0, 0.0)
    assert s.start_timestep is None and s.loop == (751, 501, 251, 1) and s.num_network_evals == 4


@pytest.mark.parametrize("steps", range(1, 30))
def test_step_presets_give_that_many_evaluations(steps):
    p = preset_for_steps(steps)
    s = make_schedule(leading_timesteps(p.num_inference_steps), p.t_max, p.t_min)
    assert s.num_network_evals == steps
    if steps > 1:
        assert s.final_x0 and 400 <= s.loop[-1] <= 520 and s.loop[0] <= 667


def test_paper_presets():
    s1, s2 = preset_for_steps(1), preset_for_steps(2)
    assert (s1.num_inference_steps, s1.t_min, s1.guidance_scale) == (1, 0.0, 1.0)
    assert (s2.num_inference_steps, s2.t_max, s2.t_min, s2.guidance_scale) == (6, 0.6667, 0.5, 4.5)
    assert make_schedule(leading_timesteps(6), s2.t_max, s2.t_min).timesteps == (999, 499)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            preset_for_steps(bad)
