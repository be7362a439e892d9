"""Precision: what each choice runs on the CPU (fallbacks with a notice, real bf16 autocast, fp32
master weights), and on a CUDA GPU fp16's loss scaling (Micikevicius et al. 2018)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer import clipping, precision
from trainer.errors import ConfigError

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", ["fp16", "tf32"])
def test_gpu_only_choices_fall_back_to_fp32_on_cpu(name: str) -> None:
    strategy = precision.build(name, CPU)
    assert (strategy.requested, strategy.actual, strategy.device_type) == (name, "fp32", "cpu")
    assert strategy.notice is not None and f"precision={name}" in strategy.notice and "fp32" in strategy.notice
    assert strategy.autocast_dtype is None
    assert not strategy.scaler.is_enabled()
    with strategy.autocast():
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


@pytest.mark.parametrize(("name", "actual"), [("fp32", "fp32"), ("auto", "fp32"), ("bf16", "bf16")])
def test_cpu_choices_without_notice(name: str, actual: str) -> None:
    strategy = precision.build(name, CPU)
    assert strategy.actual == actual and strategy.notice is None
    assert not strategy.scaler.is_enabled()  # bf16 has fp32's exponent range: no loss scaling


def test_bf16_on_cpu_autocasts_and_keeps_fp32_master_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    strategy = precision.build("bf16", CPU)
    x, y = torch.randn(32, 8), torch.randint(3, (32,))
    with strategy.autocast():
        out = model(x)
        assert out.dtype == torch.bfloat16
        loss = nn.functional.cross_entropy(out, y)
    assert model(x).dtype == torch.float32  # only inside the context
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    strategy.backward(loss)
    norm, _ = strategy.step(optimizer, clipping.none(), list(model.parameters()))
    assert norm is not None and torch.isfinite(norm)
    for p, old in zip(model.parameters(), before):
        assert p.dtype == torch.float32
        assert not torch.equal(p.detach(), old), "the step was applied"
        assert p.grad is None


def test_unknown_name() -> None:
    with pytest.raises(ConfigError, match="precision='fp8'"):
        precision.build("fp8", CPU)


def test_scaler_state_round_trip() -> None:
    strategy = precision.build("fp32", CPU)
    precision.build("fp32", CPU).load_state_dict(strategy.state_dict())


# --- CUDA --------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
def test_fp16_on_cuda_uses_an_enabled_grad_scaler() -> None:
    strategy = precision.build("fp16", torch.device("cuda"))
    assert (strategy.actual, strategy.notice) == ("fp16", None)
    assert strategy.scaler.is_enabled()
    torch.manual_seed(0)
    model = nn.Linear(8, 3).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with strategy.autocast():
        out = model(torch.randn(4, 8, device="cuda"))
        assert out.dtype == torch.float16
        loss = out.float().pow(2).mean()
    before = model.weight.detach().clone()
    strategy.backward(loss)
    strategy.step(optimizer, clipping.norm(max_norm=1.0), list(model.parameters()))
    assert strategy.scaler.get_scale() > 1.0  # the loss scale exists (65536 at the start)
    assert model.weight.dtype == torch.float32
    assert not torch.equal(model.weight.detach(), before)
    assert "scale" in strategy.state_dict()


@pytest.mark.cuda
@needs_cuda
def test_bf16_on_cuda_autocasts() -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    strategy = precision.build("bf16", torch.device("cuda"))
    assert not strategy.scaler.is_enabled()
    with strategy.autocast():
        assert nn.Linear(8, 3).cuda()(torch.randn(4, 8, device="cuda")).dtype == torch.bfloat16


@pytest.mark.cuda
@needs_cuda
def test_auto_on_cuda_picks_a_half_precision() -> None:
    strategy = precision.build("auto", torch.device("cuda"))
    assert strategy.actual == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
