"""Precision: what each choice runs on the CPU (tf32's fallback with a notice, real bf16 and fp16
autocast, fp32 master weights), fp16's loss scaling (Micikevicius et al. 2018) run for real on the
CPU with the GPU's code path (torch.amp.GradScaler, fused optimizers), and the settings that must
not leak from one job of a sweep to the next."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from trainer.engine.parts import build_parts
from trainer.errors import ConfigError
from trainer.models.peephole import PeepholeLSTM
from trainer.run import run
from trainer.tricks import clipping, optim, precision

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_tf32_falls_back_to_fp32_on_cpu() -> None:
    name = "tf32"
    strategy = precision.build(name, CPU)
    assert (strategy.requested, strategy.actual, strategy.device_type) == (name, "fp32", "cpu")
    assert strategy.notice is not None and f"precision={name}" in strategy.notice and "fp32" in strategy.notice
    assert strategy.autocast_dtype is None
    assert not strategy.scaler.is_enabled()
    with strategy.autocast():
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


@pytest.mark.parametrize(("name", "actual"), [("fp32", "fp32"), ("auto", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_cpu_choices_without_notice(name: str, actual: str) -> None:
    strategy = precision.build(name, CPU)
    assert strategy.actual == actual and strategy.notice is None
    # bf16 has fp32's exponent range: no loss scaling; fp16 scales, on the CPU as on a GPU.
    assert strategy.scaler.is_enabled() == (name == "fp16")


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
    parts, _ = strategy.step(optimizer, clipping.none(), list(model.parameters()))
    norm = clipping.total_norm(parts)
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


# --- fp16 and its loss scaler, for real on the CPU ---------------------------------------------


def fp16_setup(optim_name: str = "sgd", lr: float = 0.1) -> tuple[precision.Precision, nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return precision.build("fp16", CPU), model, optim.build(model, optim_name, lr=lr)


def fp16_loss(strategy: precision.Precision, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with strategy.autocast():
        out = model(x)
        assert out.dtype == torch.float16
        return nn.functional.cross_entropy(out, y)


def test_fp16_scales_the_loss_then_unscales_clips_and_steps() -> None:
    strategy, model, optimizer = fp16_setup()
    assert optimizer.defaults.get("fused") is True  # the GPU's path: the skip decision stays on the device
    x, y = torch.randn(32, 8), torch.randint(3, (32,))
    loss = fp16_loss(strategy, model, x, y)
    loss.backward(retain_graph=True)
    true_grads = [p.grad.clone() for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)
    strategy.backward(loss)  # scaled by 65536
    scale = strategy.loss_scale
    assert scale == 65536.0
    for p, grad in zip(model.parameters(), true_grads):
        torch.testing.assert_close(p.grad, grad * scale)
    before = [p.detach().clone() for p in model.parameters()]
    true_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in true_grads]))
    max_norm = float(true_norm) / 2
    parts, skipped = strategy.step(optimizer, clipping.norm(max_norm=max_norm), list(model.parameters()))
    norm = clipping.total_norm(parts)
    assert not skipped
    torch.testing.assert_close(norm, true_norm)  # measured on the unscaled gradients
    for p, old, grad in zip(model.parameters(), before, true_grads):
        assert p.dtype == torch.float32 and p.grad is None
        # SGD with lr 0.1 on the unscaled gradient, clipped to half its norm.
        torch.testing.assert_close(p.detach(), old - 0.1 * grad * (max_norm / true_norm), rtol=1e-4, atol=1e-6)
    assert strategy.loss_scale == 65536.0  # a good step keeps the scale until growth_interval


def test_fp16_skips_an_overflowing_step_and_halves_the_scale() -> None:
    strategy, model, optimizer = fp16_setup("adamw")
    _, reference, reference_optimizer = fp16_setup("adamw")  # the same weights; never sees the overflow
    x, y = torch.randn(32, 8), torch.randint(3, (32,))
    before = [p.detach().clone() for p in model.parameters()]
    strategy.backward(fp16_loss(strategy, model, x * 1e6, y))  # fp16 overflows: inf logits, non-finite grads
    parts, skipped = strategy.step(optimizer, clipping.norm(max_norm=1.0), list(model.parameters()))
    norm = clipping.total_norm(parts)
    assert not torch.isfinite(norm) and not skipped  # the scaler skipped it (nan_policy=skip did not)
    assert all(torch.equal(p.detach(), old) for p, old in zip(model.parameters(), before))
    assert strategy.loss_scale == 32768.0
    strategy.backward(fp16_loss(strategy, model, x, y))
    parts, _ = strategy.step(optimizer, clipping.none(), list(model.parameters()))
    norm = clipping.total_norm(parts)
    assert torch.isfinite(norm)
    fp16_loss(strategy, reference, x, y).backward()
    reference_optimizer.step()
    for p, q, old in zip(model.parameters(), reference.parameters(), before):
        assert not torch.equal(p.detach(), old)
        # The skipped step left AdamW's state (moments, step count) as if it never happened.
        torch.testing.assert_close(p.detach(), q.detach())


def test_fp16_scale_grows_after_the_growth_interval_and_state_round_trips() -> None:
    strategy, model, optimizer = fp16_setup()
    x, y = torch.randn(32, 8), torch.randint(3, (32,))
    state = strategy.state_dict()
    state["_growth_tracker"] = state["growth_interval"] - 1  # one good step short of growing
    restored = precision.build("fp16", CPU)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    restored.backward(fp16_loss(restored, model, x, y))
    restored.step(optimizer, clipping.none(), list(model.parameters()))
    assert restored.loss_scale == 2 * 65536.0
    assert restored.state_dict()["_growth_tracker"] == 0


def test_fp16_accumulation_sums_the_unscaled_micro_batch_gradients() -> None:
    strategy, model, optimizer = fp16_setup()
    x, y = torch.randn(32, 8), torch.randint(3, (32,))
    expected = None
    for half in (slice(0, 16), slice(16, 32)):
        fp16_loss(strategy, model, x[half], y[half]).div(2).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in model.parameters()]
    for half in (slice(0, 16), slice(16, 32)):
        strategy.backward(fp16_loss(strategy, model, x[half], y[half]) / 2)
    strategy.step(optimizer, clipping.none(), list(model.parameters()))
    for p, old, grad in zip(model.parameters(), before, expected):
        torch.testing.assert_close(p.detach(), old - 0.1 * grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_fused_momentum_sgd_survives_a_skipped_first_step(name: str) -> None:
    """The fused kernel's momentum buffers, uninitialised until its first applied step, are zeros:
    a first step skipped by the scaler must leave the next step an ordinary first step."""
    strategy, model, optimizer = fp16_setup(name)
    assert optimizer.defaults.get("fused") is True
    reference = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    reference.load_state_dict(model.state_dict())
    unfused = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, nesterov=name == "nesterov")
    x, y = torch.randn(32, 8), torch.randint(3, (32,))
    strategy.backward(fp16_loss(strategy, model, x * 1e6, y))  # overflow: the first step is skipped
    strategy.step(optimizer, clipping.none(), list(model.parameters()))
    for _ in range(2):
        strategy.backward(fp16_loss(strategy, model, x, y))
        strategy.step(optimizer, clipping.none(), list(model.parameters()))
        with torch.autocast("cpu", dtype=torch.float16):
            nn.functional.cross_entropy(reference(x), y).backward()
        unfused.step()
        unfused.zero_grad()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-5)


def test_fp16_run_on_cpu_records_the_loss_scale(make_cfg, tmp_path) -> None:
    summary = run(make_cfg("precision=fp16", "trainer.accumulate=2", "max_steps=4", "batch_size=16",
                           "optim=momentum"), tmp_path)
    assert summary["status"] == "completed" and summary["precision"] == {"requested": "fp16", "actual": "fp16"}
    assert summary["final"]["val_loss"] is not None and summary["final"]["val_loss"] < 10
    import json
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scales = [row["loss_scale"] for row in steps if row.get("kind") == "step"]
    assert len(scales) == 4 and all(scale >= 1.0 for scale in scales)


# --- settings that must not leak from one job to the next --------------------------------------


def test_auto_picks_fp16_where_bf16_is_only_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before compute capability 8.0, torch emulates bf16 (and says it is supported, since 2.4)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    with pytest.warns(UserWarning, match="CUDA is not available"):  # this machine's GradScaler has no GPU
        assert precision.build("auto", torch.device("cuda")).actual == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.build("auto", torch.device("cuda")).actual == "bf16"


def test_tf32_does_not_leak_into_the_next_job(make_cfg) -> None:
    cuda_fp32 = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
    precision.build("tf32", torch.device("cuda"))  # a job on a GPU with precision=tf32
    assert [backend.fp32_precision for backend in cuda_fp32] == ["tf32"] * 3
    build_parts(make_cfg("precision=bf16"))  # the next job in the same process
    assert [backend.fp32_precision for backend in cuda_fp32] == ["ieee"] * 3


def test_deterministic_does_not_leak_into_the_next_job(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        build_parts(make_cfg("deterministic=true"))
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        build_parts(make_cfg("deterministic=false"))
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


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
    assert strategy.actual == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16")


@pytest.mark.parametrize("model", ["model=rnn", "model=char_lstm", "model=seq2seq"])
def test_fp16_on_the_cpu_runs_an_lstm_in_fp32_with_a_notice(model: str, make_cfg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """PyTorch's CPU LSTM has no float16 kernel: the run's first forward raised a traceback."""
    from trainer.run import run

    data = {"model=rnn": ["data=adding"], "model=char_lstm": ["data=text", "data.max_chars=3000", "data.seq_len=16"],
            "model=seq2seq": ["data=seq2seq", "norm=none", "data.num_train=64", "data.num_val=16", "data.num_test=0"]}[model]
    summary = run(make_cfg(model, *data, "precision=fp16", "max_steps=2"), tmp_path)
    assert summary["status"] == "completed"
    assert summary["precision"] == {"requested": "fp16", "actual": "fp32"}
    for runs in (nn.GRU(4, 4), nn.RNN(4, 4), PeepholeLSTM(4, 4)):  # float16 GRUs and everything else run on the CPU
        strategy = precision.build("fp16", CPU, runs)
        assert strategy.actual == "fp16" and strategy.notice is None, type(runs).__name__
    assert "cannot run an LSTM" in (precision.build("fp16", CPU, nn.LSTM(4, 4)).notice or "")


def test_fp16_on_the_cpu_runs_a_peephole_lstm_in_fp16(make_cfg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The peephole LSTM is an nn.LSTM subclass that runs its own step-by-step ops, not the fused
    kernel that has no float16 CPU version: it needs no fallback to fp32."""
    summary = run(make_cfg("model=rnn", "model.peephole=true", "precision=fp16", "max_steps=2"), tmp_path)
    assert summary["status"] == "completed"
    assert summary["precision"] == {"requested": "fp16", "actual": "fp16"}
