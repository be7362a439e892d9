"""Gradient clipping: norm clipping rescales all gradients together (Pascanu et al. 2013), value
clipping clamps each element, and the step the optimizer takes uses the clipped gradient."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.engine.meter import StepMeter
from trainer.errors import ConfigError
from trainer.tricks import clipping, precision


def params_with_grads(scale: float, seed: int = 0) -> list[nn.Parameter]:
    """Three tensors of different shapes whose gradients have global L2 norm `scale`."""
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(shape, generator=g)) for shape in ((8, 5), (5,), (3, 2, 2))]
    grads = [torch.randn(p.shape, generator=g) for p in params]
    total = math.sqrt(sum(float(x.pow(2).sum()) for x in grads))
    for p, grad in zip(params, grads):
        p.grad = grad * (scale / total)
    return params


def flat_grad(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in params])


def test_norm_clipping_caps_the_global_norm_keeping_the_direction() -> None:
    params = params_with_grads(10.0)
    before = flat_grad(params).clone()
    returned = clipping.total_norm(clipping.norm(max_norm=1.0)(params, measure=False))
    after = flat_grad(params)
    assert float(returned) == pytest.approx(10.0, rel=1e-5)  # the norm measured before clipping
    assert float(after.norm()) <= 1.0 + 1e-6
    assert float(after.norm()) == pytest.approx(1.0, rel=1e-5)  # rescaled to the cap, not below it
    assert float(nn.functional.cosine_similarity(before, after, dim=0)) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(after, before / 10.0, rtol=1e-5, atol=1e-7)  # one common factor


def test_norm_clipping_leaves_small_gradients_untouched() -> None:
    params = params_with_grads(0.5)
    before = flat_grad(params).clone()
    returned = clipping.total_norm(clipping.norm(max_norm=1.0)(params, measure=True))
    assert float(returned) == pytest.approx(0.5, rel=1e-5)
    torch.testing.assert_close(flat_grad(params), before, rtol=1e-6, atol=0)


def test_norm_clipping_inf_norm() -> None:
    params = params_with_grads(10.0)
    before = flat_grad(params).clone()
    clipping.norm(max_norm=0.1, norm_type=math.inf)(params, measure=True)
    assert float(flat_grad(params).abs().max()) == pytest.approx(0.1, rel=1e-5)
    assert float(nn.functional.cosine_similarity(before, flat_grad(params), dim=0)) == pytest.approx(1.0, abs=1e-6)


def test_value_clipping_bounds_every_element() -> None:
    params = params_with_grads(10.0)
    before = flat_grad(params).clone()
    assert before.abs().max() > 0.5 and (before.abs() < 0.5).any()
    norm = clipping.total_norm(clipping.value(clip_value=0.5)(params, measure=True))
    after = flat_grad(params)
    assert float(norm) == pytest.approx(10.0, rel=1e-5)  # measured before clamping
    assert float(after.abs().max()) <= 0.5
    torch.testing.assert_close(after, before.clamp(-0.5, 0.5))  # small elements kept, large ones clamped
    assert clipping.value(clip_value=0.5)(params, measure=False) is None


def test_none_leaves_grads_untouched() -> None:
    params = params_with_grads(10.0)
    before = flat_grad(params).clone()
    strategy = clipping.none()
    assert strategy(params, measure=False) is None
    assert float(clipping.total_norm(strategy(params, measure=True))) == pytest.approx(10.0, rel=1e-5)
    assert torch.equal(flat_grad(params), before)


def test_grad_norm_skips_params_without_grad() -> None:
    params = params_with_grads(3.0)
    extra = nn.Parameter(torch.ones(4))  # no .grad
    assert float(clipping.total_norm(clipping.norm_parts([*params, extra]))) == pytest.approx(3.0, rel=1e-5)
    assert float(clipping.total_norm(clipping.norm_parts([extra]))) == 0.0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: clipping.norm(max_norm=0.0), "clipping.max_norm"),
        (lambda: clipping.norm(max_norm=-1.0), "clipping.max_norm"),
        (lambda: clipping.norm(norm_type=0.0), "clipping.norm_type"),
        (lambda: clipping.value(clip_value=0.0), "clipping.clip_value"),
        (lambda: clipping.value(clip_value=-0.5), "clipping.clip_value"),
    ],
)
def test_bad_args(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        make()


def test_step_uses_the_clipped_gradient() -> None:
    """Through the precision strategy's backward -> clip -> step: SGD moves by lr * clipped gradient."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(50))
    direction = torch.randn(50)
    direction = direction * (20.0 / direction.norm())  # d(loss)/dw = direction, norm 20
    start = w.detach().clone()
    lr, max_norm = 0.1, 2.0
    optimizer = torch.optim.SGD([w], lr=lr)
    strategy = precision.build("fp32", torch.device("cpu"))
    strategy.backward((w * direction).sum())
    parts, _ = strategy.step(optimizer, clipping.norm(max_norm=max_norm), [w])
    norm = clipping.total_norm(parts)
    assert float(norm) == pytest.approx(20.0, rel=1e-5)
    step = start - w.detach()
    torch.testing.assert_close(step, lr * direction * (max_norm / 20.0), rtol=1e-5, atol=1e-7)
    assert float(step.norm()) == pytest.approx(lr * max_norm, rel=1e-5)  # not lr * 20
    assert w.grad is None  # zeroed for the next step


def test_the_step_meter_reads_each_steps_global_norm_from_its_parts() -> None:
    """The meter reduces the steps' NormParts at the read: the same figures, bit for bit, as each
    step's own total_norm, whether the steps came in as many parts or not (a parameter without
    a gradient at some step, or a clipping strategy that returns the norm itself)."""
    generator = torch.Generator().manual_seed(0)
    steps = [torch.rand(11, generator=generator) * 10 for _ in range(3)]
    mixed = [*steps, torch.tensor([2.5]), torch.rand(4, generator=generator)]
    for recorded in (steps, mixed):
        meter = StepMeter()
        for number, parts in enumerate(recorded):
            meter.record(torch.tensor(float(number)), parts)
        losses, norms = meter.read()
        assert losses == [float(n) for n in range(len(recorded))] and meter.pending == 0
        assert norms == [float(clipping.total_norm(parts)) for parts in recorded]
    assert norms[3] == 2.5
