"""layer_stats.collect: one dict per layer, correct numbers, and the model left exactly as found."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from trainer.engine.parts import build_parts
from trainer.observe import layer_stats
from trainer.observe.layer_stats import collect
from trainer.tricks import precision as precision_module

FP32 = precision_module.build("fp32", torch.device("cpu"))



def test_every_layer_reported_and_model_untouched(make_cfg: Callable[..., DictConfig]) -> None:
    parts = build_parts(make_cfg("model=mlp", "norm=batchnorm", "regularisation=dropout"))
    model = parts.model
    model.eval()
    model.body[1].train()  # a mixed mode must come back as it was, module by module
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads_before = {name: p.grad for name, p in model.named_parameters()}
    state_before = {key: value.clone() for key, value in model.state_dict().items()}
    modes_before = [m.training for m in model.modules()]
    rng_before = torch.get_rng_state()
    x, y = parts.data.x_train[:32], parts.data.y_train[:32]

    rows = collect(model, x, y, parts.criterion, parts.precision)

    kinds = [row["kind"] for row in rows]
    assert {"Linear", "BatchNorm1d", "ReLU"} <= set(kinds)
    assert rows[-1]["name"] == "head"
    assert set(rows[0]) == {"name", "kind", "act_mean", "act_std", "dead_fraction", "weight_norm", "grad_norm", "grad_std"}
    relu = next(row for row in rows if row["kind"] == "ReLU")
    linear = next(row for row in rows if row["kind"] == "Linear")
    assert relu["dead_fraction"] is not None and relu["weight_norm"] is None and relu["grad_norm"] is None
    assert linear["dead_fraction"] is None and linear["grad_norm"] > 0 and linear["weight_norm"] > 0
    # Nothing changed: mode per module, weights and BatchNorm buffers, .grad (same tensors), RNG, hooks.
    assert [m.training for m in model.modules()] == modes_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_before[key]), key
    for name, p in model.named_parameters():
        assert p.grad is grads_before[name] and torch.all(p.grad == 0.5)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(not m._forward_hooks for m in model.modules())


def test_grads_none_stay_none_and_match_a_manual_backward(make_cfg: Callable[..., DictConfig]) -> None:
    parts = build_parts(make_cfg("model=mlp", "norm=none"))
    x, y = parts.data.x_train[:16], parts.data.y_train[:16]
    rows = collect(parts.model, x, y, parts.criterion, parts.precision)
    assert all(p.grad is None for p in parts.model.parameters())
    parts.criterion(parts.model(x), y).backward()
    head = parts.model.head.weight
    row = next(r for r in rows if r["name"] == "head")
    assert row["grad_norm"] == pytest.approx(head.grad.norm().item(), rel=1e-5)
    assert row["grad_std"] == pytest.approx(head.grad.std().item(), rel=1e-5)
    assert row["weight_norm"] == pytest.approx(head.norm().item(), rel=1e-6)


def test_dead_fraction_counts_units_zero_for_every_sample() -> None:
    linear = nn.Linear(3, 4)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor([-1.0, -1.0, -1.0, 1.0]))  # three units never fire
    model = nn.Sequential(linear, nn.ReLU(), nn.Linear(4, 2))
    rows = collect(model, torch.randn(8, 3), torch.randint(2, (8,)), nn.CrossEntropyLoss(), FP32)
    relu = next(row for row in rows if row["kind"] == "ReLU")
    assert relu["dead_fraction"] == pytest.approx(0.75)


def test_a_conv_channel_lives_if_it_fires_once_anywhere() -> None:
    # (samples, channels, positions): channel 0 fires at one sample and one position only, channel 1
    # never (zero and negative values), channel 2 everywhere.
    maps = torch.full((6, 3, 5), -1.0)
    maps[4, 0, 3] = 0.5
    maps[:, 1, 2] = 0.0
    maps[:, 2] = 2.0
    assert layer_stats._alive_count(maps).item() == 2.0  # a dead fraction of 1/3
    assert layer_stats._alive_units(maps).tolist() == [True, False, True]


def test_reused_module_reported_per_call_and_samples_returned() -> None:
    act = nn.Tanh()
    model = nn.Sequential(nn.Linear(5, 5), act, nn.Linear(5, 5), act, nn.Linear(5, 3))
    rows = collect(model, torch.randn(4, 5), torch.randint(3, (4,)), nn.CrossEntropyLoss(), FP32, activation_samples=7)
    assert [row["name"] for row in rows] == ["0", "1", "2", "1#2", "4"]
    assert all(row["activations"].shape == (7,) for row in rows[:-1])  # 4 x 5 outputs, 7 kept


def test_recurrent_layers_report_their_output(make_cfg: Callable[..., DictConfig]) -> None:
    parts = build_parts(make_cfg("model=rnn", "model.hidden=16", "norm=none", "init=default"))
    rows = collect(parts.model, parts.data.x_train[:8], parts.data.y_train[:8], parts.criterion, parts.precision)
    lstm = next(row for row in rows if row["kind"] == "LSTM")
    assert lstm["act_std"] > 0 and lstm["grad_norm"] > 0


# ---- the training step's own statistics (Trainer(watch_layers=True)) --------------------------

def _trainer(parts, watch: bool):  # type: ignore[no-untyped-def]
    import io

    from rich.console import Console

    from trainer.engine.loop import Trainer
    from trainer.observe.display import PlainDisplay
    return Trainer(parts, PlainDisplay(Console(file=io.StringIO())), [], torch.Generator().manual_seed(0),
                   watch_layers=watch)


STEP = ["model=mlp", "norm=batchnorm", "sched=constant", "checkpoint.every_epochs=0"]


def test_watched_step_trains_bit_identically(make_cfg: Callable[..., DictConfig]) -> None:
    """The hooks only read: a run whose steps are measured ends with the same weights and buffers."""
    ends = []
    for watch in (False, True):
        torch.manual_seed(0)
        parts = build_parts(make_cfg(*STEP, "regularisation=dropout"))
        trainer = _trainer(parts, watch)
        for step in range(4):
            trainer.train_step(torch.arange(step * 16, (step + 1) * 16), measure_layers=True)
        assert (trainer.layer_rows is not None) == watch
        ends.append(parts.model.state_dict())
    for key, value in ends[0].items():
        assert torch.equal(value, ends[1][key]), key
    assert all(not m._forward_hooks for m in parts.model.modules())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_watched_step_reports_that_steps_activations_and_gradients(make_cfg: Callable[..., DictConfig],
                                                                    precision: str) -> None:
    """The rows are the step's own batch and its gradients before the update (fp16: unscaled)."""
    parts = build_parts(make_cfg(*STEP, f"precision={precision}"))
    reference = build_parts(make_cfg(*STEP))  # the same seed: the same initial weights, in fp32
    index = torch.arange(32)
    x, y = reference.data.x_train[index], reference.data.y_train[index]
    first = next(name for name, module in reference.model.named_modules() if isinstance(module, nn.Linear))
    activations = {}
    hook = reference.model.get_submodule(first).register_forward_hook(
        lambda m, i, out: activations.setdefault("first", out.detach()))
    reference.criterion(reference.model(x), y).backward()
    hook.remove()

    trainer = _trainer(parts, True)
    trainer.train_step(index, measure_layers=True)
    rows = {row["name"]: row for row in trainer.layer_rows or []}
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    assert rows[first]["act_mean"] == pytest.approx(activations["first"].mean().item(), rel=tolerance, abs=1e-4)
    head = reference.model.head
    assert rows["head"]["grad_norm"] == pytest.approx(head.weight.grad.norm().item(), rel=tolerance)
    assert rows["head"]["weight_norm"] == pytest.approx(head.weight.norm().item(), rel=1e-6)  # before the update
    assert not torch.equal(parts.model.head.weight, head.weight)  # and the step did update


def test_watched_step_with_accumulation_reports_each_layer_once(make_cfg: Callable[..., DictConfig]) -> None:
    parts = build_parts(make_cfg(*STEP, "trainer.accumulate=2"))
    trainer = _trainer(parts, True)
    trainer.train_step(torch.arange(32), measure_layers=True)
    names = [row["name"] for row in trainer.layer_rows or []]
    assert names and not any("#" in name for name in names)  # the last micro-batch's forward only


def test_a_seq2seq_encoder_fed_packed_sequences_is_reported(make_cfg: Callable[..., DictConfig]) -> None:
    """The encoder's RNN reads a PackedSequence (padding skipped) and returns one: it is a layer too."""
    parts = build_parts(make_cfg("data=seq2seq", "model=seq2seq", "norm=none", "data.num_train=64",
                                 "data.num_val=16", "data.num_test=0"))
    x, y = parts.data.x_train[:8], parts.data.y_train[:8]
    names = [row["name"] for row in collect(parts.model, x, y, parts.criterion, parts.precision)]
    trainer = _trainer(parts, True)
    trainer.train_step(torch.arange(8), measure_layers=True)
    rows = {row["name"]: row for row in trainer.layer_rows or []}
    for name in ("encoder.layers.0", "decoder.layers.0"):
        assert name in names and name in rows
        assert rows[name]["act_std"] > 0 and rows[name]["grad_norm"] > 0


@pytest.mark.parametrize("skipping", ["nan_policy=skip", "precision=fp16"])
def test_a_skipped_last_step_records_no_statistics(make_cfg: Callable[..., DictConfig], skipping: str) -> None:
    """A step whose update is skipped (non-finite gradients: nan_policy=skip, or fp16's scaler
    calibrating) measured nan or inf: the evaluation measures apart instead (layers_probe)."""
    from trainer.observe.probes import layers_probe

    parts = build_parts(make_cfg(*STEP, skipping))
    trainer = _trainer(parts, True)
    parts.data.x_train[16:32] = float("nan")
    trainer.train_step(torch.arange(16, 32), measure_layers=True)
    assert trainer.layer_rows is None
    record = layers_probe(trainer)
    numbers = [row[key] for row in record["layers"] for key in ("act_mean", "grad_norm") if row[key] is not None]
    assert numbers and all(value == value and abs(value) != float("inf") for value in numbers)
    trainer.train_step(torch.arange(16), measure_layers=True)  # a finite step is measured again
    assert trainer.layer_rows is not None


class _StepLoop(nn.Module):
    """A layer stack run once per time step, as a decoder fed its own predictions runs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.relu, self.head = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, T, 3)
        from trainer.models.time_steps import time_steps

        with time_steps():
            steps = [self.head(self.relu(self.lin(x[:, t]))) for t in range(x.shape[1])]
        return torch.stack(steps).mean(0)


def test_a_layer_run_at_every_time_step_is_one_row_over_all_its_steps() -> None:
    torch.manual_seed(0)
    model = _StepLoop()
    with torch.no_grad():  # unit 0 fires only where the first feature is positive: at step 1, not step 0
        model.lin.weight.zero_()
        model.lin.weight[0, 0] = 1.0
        model.lin.bias.copy_(torch.tensor([0.0, -1.0, 1.0, 0.5]))
    x = torch.randn(6, 3, 3)
    x[:, 0, 0], x[:, 1, 0], x[:, 2, 0] = -1.0, 1.0, -2.0
    rows = collect(model, x, torch.randint(2, (6,)), nn.CrossEntropyLoss(), FP32, activation_samples=5)
    assert [row["name"] for row in rows] == ["lin", "relu", "head"]  # not one row per step and layer
    relu = torch.stack([torch.relu(model.lin(x[:, t])) for t in range(3)]).detach()
    row = rows[1]
    assert row["act_mean"] == pytest.approx(relu.mean().item(), rel=1e-6)
    assert row["act_std"] == pytest.approx(relu.std().item(), rel=1e-5)
    assert row["dead_fraction"] == pytest.approx(0.25)  # unit 1 alone is dead at every step; unit 0 lives at step 1
    assert row["activations"].shape == (5,)


def test_a_seq2seq_decoder_fed_its_own_predictions_reports_one_row_per_layer(
        make_cfg: Callable[..., DictConfig]) -> None:
    """Scheduled sampling (teacher_forcing < 1) runs the decoder step by step: its layers' hooks
    fired once per time step, giving rows head, head#2, ... head#9."""
    parts = build_parts(make_cfg("data=seq2seq", "model=seq2seq", "norm=none", "data.num_train=64",
                                 "data.num_val=16", "data.num_test=0"))
    x, y = parts.data.x_train[:8], parts.data.y_train[:8]
    forced = [row["name"] for row in collect(parts.model, x, y, parts.criterion, parts.precision)]
    parts.model.teacher_forcing_ratio = 0.0  # every step's input is the previous prediction: no RNG
    outputs: list[torch.Tensor] = []
    parts.model.head.register_forward_hook(lambda _module, _inputs, out: outputs.append(out.detach().float()))
    rows = collect(parts.model, x, y, parts.criterion, parts.precision)
    assert [row["name"] for row in rows] == forced and len(outputs) > 2
    head = next(row for row in rows if row["name"] == "head")
    every_step = torch.cat([out.reshape(-1) for out in outputs])
    assert head["act_mean"] == pytest.approx(every_step.mean().item(), rel=1e-5, abs=1e-7)
    assert head["act_std"] == pytest.approx(every_step.std().item(), rel=1e-5)
    trainer = _trainer(parts, True)  # the training step's own statistics too
    trainer.train_step(torch.arange(8), measure_layers=True)
    assert [row["name"] for row in trainer.layer_rows or []] == forced


def test_activation_std_keeps_a_saturated_layers_small_spread():
    """A layer whose outputs sit near 1000 with a spread of 0.001: the two-pass std keeps it to float32's
    precision, where a sum of squares would lose every digit (mean of squares 1e6, variance 1e-6)."""
    torch.manual_seed(0)
    outputs = 1000 + 1e-3 * torch.randn(100, 32, 19, dtype=torch.float64)
    stats = layer_stats._activation_stats(outputs.float(), relu_family=False)
    assert stats.std.item() == pytest.approx(outputs.std().item(), rel=1e-2)
    assert stats.mean.item() == pytest.approx(outputs.mean().item(), rel=1e-6)


@pytest.mark.parametrize(("every", "epochs_measured"), [(1, [0, 1, 2, 3, 4, 5, 6, 7]), (5, [0, 3, 6, 7]), (1000, [0, 7])])
def test_layer_statistics_come_every_kth_epoch_and_at_the_end(tmp_path, make_cfg: Callable[..., DictConfig],
                                                                every: int, epochs_measured: list[int]) -> None:
    """2 steps an epoch: layer_stats_every=5 is every 3rd epoch (the fewest holding 5 steps), plus the
    fresh model's (epoch 0) and the last epoch's, which the diagnosis reads."""
    import json

    from trainer.run import run

    cfg = make_cfg("max_steps=null", "epochs=7", "data.num_train=64", "batch_size=32", f"layer_stats_every={every}")
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 14
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    layers = [record for record in records if record["kind"] == "layers"]
    assert [record["epoch"] for record in layers] == epochs_measured
    assert [record["step"] for record in layers] == [0, *(2 * epoch for epoch in epochs_measured[1:])]
