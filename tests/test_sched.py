"""Learning-rate schedules: the LR each builder gives at every step, against the papers' formulas.

Each step-based schedule is driven the way the loop drives it (`step_end()` after each optimizer
step), recording the LR the optimizer holds for each step.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch

from trainer.errors import ConfigError
from trainer.tricks import sched

BASE = 0.1
TOTAL = 100
PER_EPOCH = 10


def make_optimizer(**kw: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=BASE, **kw)


def lrs(builder: Callable[..., sched.Schedule], steps: int = TOTAL, **kw: Any) -> list[float]:
    """The LR used by each of `steps` steps, then the LR after the last one (steps + 1 values)."""
    optimizer = make_optimizer(momentum=0.9)
    schedule = builder(optimizer, TOTAL, PER_EPOCH, **kw)
    out = []
    for _ in range(steps):
        out.append(sched.current_lr(optimizer))
        optimizer.step()
        schedule.step_end()
    out.append(sched.current_lr(optimizer))
    return out


def cosine_at(t: float, period: float, low: float = 0.0) -> float:
    return BASE * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * t / period)))


def test_constant() -> None:
    assert lrs(sched.constant) == [BASE] * (TOTAL + 1)


def test_constant_never_steps_its_scheduler_and_loads_a_stepped_one() -> None:
    optimizer = make_optimizer(momentum=0.9)
    schedule = sched.constant(optimizer, TOTAL, PER_EPOCH)
    stepped = sched.Schedule(sched.LambdaLR(make_optimizer(momentum=0.9), lambda step: 1.0), steps_on="step")
    for _ in range(5):
        optimizer.step()
        schedule.step_end()
        stepped.step_end()
    schedule.eval_end(1.0)
    assert schedule.scheduler.last_epoch == 0  # no per-step work for an LR that never changes
    schedule.load_state_dict(stepped.state_dict())  # a checkpoint from when constant stepped
    assert sched.current_lr(optimizer) == BASE


def test_cosine() -> None:
    got = lrs(sched.cosine, min_lr_ratio=0.1)
    assert got[0] == pytest.approx(BASE)
    assert got[TOTAL // 2] == pytest.approx(BASE * (0.1 + 0.9 * 0.5))  # halfway: the mid point
    assert got[TOTAL] == pytest.approx(0.1 * BASE)  # at step `total`: exactly the floor
    for t in (10, 37, 99):
        assert got[t] == pytest.approx(cosine_at(t, TOTAL, 0.1))
    assert all(a >= b for a, b in zip(got, got[1:])), "monotone decay"


def test_cosine_warmup() -> None:
    warmup = 10
    got = lrs(sched.cosine_warmup, warmup_steps=warmup, min_lr_ratio=0.0)
    assert got[0] == pytest.approx(BASE / warmup)
    for t in range(warmup):  # linear ramp, (t + 1) / warmup
        assert got[t] == pytest.approx(BASE * (t + 1) / warmup)
    assert got[warmup - 1] == pytest.approx(BASE)  # the peak on the last warmup step
    assert max(got) == pytest.approx(BASE)
    assert got[warmup + 45] == pytest.approx(cosine_at(45, TOTAL - warmup))
    assert got[TOTAL] == pytest.approx(0.0, abs=1e-12)


def test_warmup_fraction_and_steps() -> None:
    by_fraction = lrs(sched.cosine_warmup, warmup_fraction=0.2)
    assert by_fraction[19] == pytest.approx(BASE) and by_fraction[18] < BASE  # 0.2 * 100 = 20 steps
    assert by_fraction[0] == pytest.approx(BASE / 20)
    steps_win = lrs(sched.cosine_warmup, warmup_steps=5, warmup_fraction=0.2)
    assert steps_win[0] == pytest.approx(BASE / 5)
    assert steps_win[4] == pytest.approx(BASE)
    assert sched.resolve_warmup(None, 0.2, TOTAL) == 20
    assert sched.resolve_warmup(7, 0.2, TOTAL) == 7


@pytest.mark.parametrize("builder", [sched.cosine_warmup, sched.warmup_linear])
@pytest.mark.parametrize("kw", [{"warmup_steps": TOTAL}, {"warmup_steps": TOTAL + 5}, {"warmup_steps": -1},
                                {"warmup_steps": None, "warmup_fraction": 1.0},
                                {"warmup_steps": None, "warmup_fraction": None}])
def test_bad_warmup(builder: Callable[..., sched.Schedule], kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="sched.warmup"):
        builder(make_optimizer(), TOTAL, PER_EPOCH, **kw)


def test_warmup_linear() -> None:
    warmup = 20
    got = lrs(sched.warmup_linear, warmup_steps=warmup, min_lr_ratio=0.1)
    assert got[0] == pytest.approx(BASE / warmup)
    assert got[warmup - 1] == pytest.approx(BASE)
    assert got[warmup + 40] == pytest.approx(BASE * (1 - 0.9 * 40 / 80))  # halfway down the line
    assert got[TOTAL] == pytest.approx(0.1 * BASE)
    down = got[warmup:]
    steps = [a - b for a, b in zip(down, down[1:])]
    assert max(steps) == pytest.approx(min(steps))  # linear: equal decrements


def test_step_divides_by_ten_every_k_epochs() -> None:
    every = 3
    got = lrs(sched.step, every_epochs=every)
    for t in range(TOTAL):
        assert got[t] == pytest.approx(BASE * 0.1 ** (t // (every * PER_EPOCH))), t
    assert got[29] == pytest.approx(BASE) and got[30] == pytest.approx(BASE / 10)  # exactly at the boundary
    assert got[60] == pytest.approx(BASE / 100)


def test_exponential_gamma_per_epoch() -> None:
    got = lrs(sched.exponential, gamma=0.5)
    for t in range(TOTAL):
        assert got[t] == pytest.approx(BASE * 0.5 ** (t // PER_EPOCH)), t
    assert got[9] == got[0] and got[10] == pytest.approx(BASE / 2)


def test_cosine_restarts() -> None:
    first = 2 * PER_EPOCH  # first_cycle_epochs=2 -> 20 steps, then 40, then 80
    got = lrs(sched.cosine_restarts, steps=160, first_cycle_epochs=2, cycle_mult=2.0)
    restarts = [first, first * (1 + 2), first * (1 + 2 + 4)]  # 20, 60, 140
    for start in [0, *restarts]:
        assert got[start] == pytest.approx(BASE), start
        assert got[start - 1] < 0.02 * BASE if start else True  # just before: near the floor
    assert got[10] == pytest.approx(cosine_at(10, 20))
    assert got[20 + 10] == pytest.approx(cosine_at(10, 40))  # the second cycle is twice as long
    assert got[60 + 40] == pytest.approx(cosine_at(40, 80))
    # no other resets
    rises = [t for t in range(1, 161) if got[t] > got[t - 1]]
    assert rises == restarts


def test_onecycle() -> None:
    got = lrs(sched.onecycle, pct_start=0.3, div_factor=25.0, final_div_factor=1e4)
    assert got[0] == pytest.approx(BASE / 25)
    peak = got.index(max(got))
    assert peak == 29  # the end of the first 30% (OneCycleLR's phase ends at pct_start * total - 1)
    assert max(got) == pytest.approx(BASE)
    assert got[TOTAL - 1] == pytest.approx(BASE / (25 * 1e4), rel=1e-3)
    assert all(a <= b for a, b in zip(got[:30], got[1:30]))
    assert all(a >= b for a, b in zip(got[29:TOTAL], got[30:TOTAL]))


def test_onecycle_cycles_momentum_inversely() -> None:
    optimizer = make_optimizer(momentum=0.9)
    schedule = sched.onecycle(optimizer, TOTAL, PER_EPOCH)
    momenta, rates = [], []
    for _ in range(TOTAL):
        momenta.append(optimizer.param_groups[0]["momentum"])
        rates.append(sched.current_lr(optimizer))
        optimizer.step()
        schedule.step_end()
    assert momenta[rates.index(max(rates))] == pytest.approx(min(momenta))
    assert momenta[0] == pytest.approx(max(momenta))


def test_onecycle_without_momentum_builds() -> None:
    sched.onecycle(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE), TOTAL, PER_EPOCH)


def test_plateau_reduces_after_patience_plus_one_bad_evaluations() -> None:
    optimizer = make_optimizer()
    schedule = sched.plateau(optimizer, TOTAL, PER_EPOCH, factor=0.1, patience=2)
    for _ in range(50):
        schedule.step_end()  # per-step events are ignored
    assert sched.current_lr(optimizer) == BASE
    seen = []
    for loss in [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]:
        schedule.eval_end(loss)
        seen.append(sched.current_lr(optimizer))
    # best 0.5 at the 2nd evaluation; 3rd, 4th, 5th are worse: after the 3rd bad one (> patience 2), x0.1
    assert seen[:4] == [BASE] * 4
    assert seen[4] == pytest.approx(BASE * 0.1)
    assert seen[5:7] == pytest.approx([BASE * 0.1] * 2)
    assert seen[7] == pytest.approx(BASE * 0.01)  # the count restarts after a reduction


def test_step_schedules_ignore_eval_end() -> None:
    optimizer = make_optimizer()
    schedule = sched.cosine(optimizer, TOTAL, PER_EPOCH)
    for loss in [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]:
        schedule.eval_end(loss)
    assert sched.current_lr(optimizer) == BASE


@pytest.mark.parametrize(
    ("name", "kw"),
    [("cosine", {}), ("cosine_warmup", {"warmup_steps": 10}), ("warmup_linear", {"warmup_steps": 10}),
     ("step", {"every_epochs": 2}), ("exponential", {}), ("cosine_restarts", {}), ("onecycle", {})],
)
def test_state_dict_round_trip_restores_position(name: str, kw: dict[str, Any]) -> None:
    builder = getattr(sched, name)
    reference = lrs(builder, **kw)
    optimizer = make_optimizer(momentum=0.9)
    schedule = builder(optimizer, TOTAL, PER_EPOCH, **kw)
    for _ in range(37):
        optimizer.step()
        schedule.step_end()
    state, optimizer_state = schedule.state_dict(), optimizer.state_dict()
    # a fresh run resumed from the saved state carries on where the first left off
    resumed_opt = make_optimizer(momentum=0.9)
    resumed = builder(resumed_opt, TOTAL, PER_EPOCH, **kw)
    resumed_opt.load_state_dict(optimizer_state)
    resumed.load_state_dict(state)
    got = [sched.current_lr(resumed_opt)]
    for _ in range(20):
        resumed_opt.step()
        resumed.step_end()
        got.append(sched.current_lr(resumed_opt))
    assert got == pytest.approx(reference[37:58])


def test_plateau_state_dict_round_trip() -> None:
    optimizer = make_optimizer()
    schedule = sched.plateau(optimizer, TOTAL, PER_EPOCH, patience=2)
    for loss in [1.0, 1.0, 1.0]:  # two bad evaluations so far
        schedule.eval_end(loss)
    resumed_opt = make_optimizer()
    resumed = sched.plateau(resumed_opt, TOTAL, PER_EPOCH, patience=2)
    resumed.load_state_dict(schedule.state_dict())
    resumed.eval_end(1.0)  # the third bad one reduces, as it would have without the restart
    assert sched.current_lr(resumed_opt) == pytest.approx(BASE * 0.1)


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("step", {"every_epochs": 0}, "sched.every_epochs"),
        ("step", {"gamma": 0.0}, "sched.gamma"),
        ("step", {"gamma": 1.5}, "sched.gamma"),
        ("exponential", {"gamma": -0.5}, "sched.gamma"),
        ("cosine", {"min_lr_ratio": -0.1}, "sched.min_lr_ratio"),
        ("cosine", {"min_lr_ratio": 1.5}, "sched.min_lr_ratio"),
        ("cosine_warmup", {"min_lr_ratio": 2.0}, "sched.min_lr_ratio"),
        ("warmup_linear", {"min_lr_ratio": -1.0}, "sched.min_lr_ratio"),
        ("cosine_restarts", {"first_cycle_epochs": 0}, "sched.first_cycle_epochs"),
        ("cosine_restarts", {"cycle_mult": 0.5}, "sched.cycle_mult"),
        ("cosine_restarts", {"min_lr_ratio": 1.5}, "sched.min_lr_ratio"),
        ("onecycle", {"pct_start": 0.0}, "sched.pct_start"),
        ("onecycle", {"pct_start": 1.0}, "sched.pct_start"),
        ("onecycle", {"div_factor": 0.5}, "sched.div_factor"),
        ("onecycle", {"final_div_factor": 0.5}, "final_div_factor"),
        ("plateau", {"factor": 1.0}, "sched.factor"),
        ("plateau", {"factor": 0.0}, "sched.factor"),
        ("plateau", {"patience": -1}, "sched.patience"),
        ("plateau", {"threshold": -0.1}, "sched.threshold=-0.1 must be >= 0"),
        ("plateau", {"min_lr": -1.0}, "sched.min_lr=-1.0 must be >= 0"),
    ],
)
def test_bad_args(name: str, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        getattr(sched, name)(make_optimizer(momentum=0.9), TOTAL, PER_EPOCH, **kw)


def test_a_run_of_one_step_needs_no_warmup() -> None:
    # 5 % of one step rounds to no warmup; the schedules must not divide by the zero-length rest.
    assert sched.resolve_warmup(None, 0.05, 1) == 0
    assert sched.warmup_cosine_factor(0, 1, 0, 0.0) == 1.0
    assert sched.warmup_linear_factor(0, 1, 0, 0.0) == 1.0
