"""Regularisation: label smoothing's loss (Szegedy et al. 2016), the L1 / coupled-L2 penalties'
gradients (weights only), the criterion per task, and dropout reaching the models."""
from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from torch import nn

from trainer.data import synthetic
from trainer.errors import ConfigError
from trainer.models import cnn, cnn1d, mlp, resnet, rnn
from trainer.tricks import optim
from trainer.tricks import regularisation
from trainer.tricks.norm import factory


def make_mlp(seed: int = 0, norm: str = "layernorm", dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return mlp.build(input_shape=(1, 20), num_outputs=4, norm=factory(norm), dropout=dropout,
                     input_dropout=0.0, activation="relu", depth=2, width=16)


def split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weight matrices and kernels, 1-D parameters: biases and norm scales / shifts)."""
    params = list(model.parameters())
    return [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]


# --- label smoothing ---------------------------------------------------------------------------


def test_label_smoothing_loss_matches_hand_computation() -> None:
    logits = [2.0, 0.5, -1.0, 0.0]
    target, eps = 0, 0.1
    log_z = math.log(sum(math.exp(z) for z in logits))
    neg_log_p = [log_z - z for z in logits]
    # target distribution (1 - eps) one-hot + eps uniform: (1 - eps) CE + eps * mean_k(-log p_k)
    expected = (1 - eps) * neg_log_p[target] + eps * sum(neg_log_p) / len(logits)
    criterion = regularisation.build(label_smoothing=eps).criterion("classification")
    got = criterion(torch.tensor([logits]), torch.tensor([target]))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    plain = regularisation.build().criterion("classification")(torch.tensor([logits]), torch.tensor([target]))
    assert float(plain) == pytest.approx(neg_log_p[target], rel=1e-6)
    assert float(got) != pytest.approx(float(plain), rel=1e-3)


def test_label_smoothing_keeps_logits_finite() -> None:
    # The point of smoothing: the loss is minimised at a finite logit gap, so confident logits are penalised.
    criterion = regularisation.build(label_smoothing=0.1).criterion("classification")
    target = torch.tensor([0])
    moderate = criterion(torch.tensor([[5.0, 0.0, 0.0, 0.0]]), target)
    extreme = criterion(torch.tensor([[50.0, 0.0, 0.0, 0.0]]), target)
    assert float(extreme) > float(moderate)


def test_criterion_per_task() -> None:
    assert isinstance(regularisation.build().criterion("regression"), nn.MSELoss)
    assert isinstance(regularisation.build().criterion("classification"), nn.CrossEntropyLoss)
    with pytest.raises(ConfigError, match="regularisation.label_smoothing=0.1"):
        regularisation.build(label_smoothing=0.1).criterion("regression")


# --- l1 / l2 penalties -------------------------------------------------------------------------


@pytest.mark.parametrize(("l1", "l2"), [(0.01, 0.0), (0.0, 0.03), (0.01, 0.03)])
def test_penalty_gradient(l1: float, l2: float) -> None:
    model = make_mlp()
    weights, flat = split(model)
    assert len(weights) == 3 and len(flat) >= 6  # 3 Linear weights; biases and layernorm scale/shift
    penalty = regularisation.build(l1=l1, l2=l2).penalty(model)
    total = penalty(torch.zeros(()))
    expected_value = sum(l1 * float(w.detach().abs().sum()) + 0.5 * l2 * float(w.detach().pow(2).sum()) for w in weights)
    assert float(total.detach()) == pytest.approx(expected_value, rel=1e-5)
    total.backward()
    for w in weights:
        torch.testing.assert_close(w.grad, l1 * torch.sign(w.detach()) + l2 * w.detach())
    for p in flat:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0


def test_zero_penalty_returns_the_loss_untouched() -> None:
    loss = torch.tensor(1.5, requires_grad=True)
    assert regularisation.build().penalty(make_mlp())(loss) is loss


def train(model: nn.Module, optimizer: torch.optim.Optimizer, penalty: Callable[[torch.Tensor], torch.Tensor],
          steps: int = 10) -> None:
    data = synthetic.build(num_train=32 * steps, num_val=1, length=20)
    for i in range(steps):
        x, y = data.x_train[32 * i:32 * (i + 1)], data.y_train[32 * i:32 * (i + 1)]
        loss = penalty(nn.functional.cross_entropy(model(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_l2_penalty_with_sgd_equals_sgd_weight_decay() -> None:
    l2, lr = 0.05, 0.1
    penalised = make_mlp()
    train(penalised, torch.optim.SGD(penalised.parameters(), lr=lr), regularisation.build(l2=l2).penalty(penalised))
    decayed = make_mlp()  # the optimizer's weight decay skips 1-D params, as the penalty does
    train(decayed, optim.build(decayed, "sgd", lr=lr, weight_decay=l2), lambda loss: loss)
    plain = make_mlp()
    train(plain, torch.optim.SGD(plain.parameters(), lr=lr), lambda loss: loss)
    for (name, a), b, c in zip(penalised.named_parameters(), decayed.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.allclose(penalised.head.weight, plain.head.weight, atol=1e-4)  # the decay did act


def test_l1_drives_weights_towards_zero() -> None:
    model = make_mlp()
    before = sum(float(w.detach().abs().sum()) for w in split(model)[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    penalty = regularisation.build(l1=0.01).penalty(model)
    for _ in range(5):  # the penalty alone: each step moves every weight lr * l1 towards zero
        optimizer.zero_grad()
        penalty(torch.zeros(())).backward()
        optimizer.step()
    after = sum(float(w.detach().abs().sum()) for w in split(model)[0])
    assert after < before


# --- argument checks and dropout ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dropout": 1.0}, "regularisation.dropout"),
        ({"dropout": -0.1}, "regularisation.dropout"),
        ({"input_dropout": 1.0}, "regularisation.input_dropout"),
        ({"l1": -1e-5}, "regularisation.l1"),
        ({"l2": -1e-5}, "regularisation.l2"),
        ({"label_smoothing": 1.0}, "regularisation.label_smoothing"),
        ({"label_smoothing": -0.1}, "regularisation.label_smoothing"),
    ],
)
def test_bad_args(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        regularisation.build(**kw)


BUILDERS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...], dict[str, Any]]] = {
    "mlp": (mlp.build, (1, 20), {"width": 8}),
    "cnn1d": (cnn1d.build, (1, 20), {"channels": 8}),
    "cnn": (cnn.build, (1, 8, 8), {"channels": [8]}),
    "resnet": (resnet.build, (1, 20), {"width": 4, "stages": 1, "depth": 1}),
    "rnn": (rnn.build, (2, 6), {"cell": "lstm", "hidden": 8, "layers": 2, "activation": "tanh"}),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_models_get_the_configured_dropout(name: str) -> None:
    reg = regularisation.build(dropout=0.3, input_dropout=0.2)
    builder, shape, kw = BUILDERS[name]
    kw = {"activation": "relu", **kw}
    model = builder(input_shape=shape, num_outputs=3, norm=factory("none"), dropout=reg.dropout,
                    input_dropout=reg.input_dropout, **kw)
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops[0] == 0.2 and drops[1:] and all(p == 0.3 for p in drops[1:])
    if name == "rnn":
        assert model.rnn.dropout == 0.3  # between the stacked LSTM layers too


def test_dropout_zeroes_fraction_p_and_rescales_survivors() -> None:
    # Inverted dropout (Srivastava et al. 2014, as implemented in nn.Dropout): in training each unit is
    # zeroed with probability p and survivors are scaled by 1 / (1 - p), so the expectation is unchanged.
    model = make_mlp(norm="none", dropout=0.25)
    drop = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    torch.manual_seed(0)
    out = drop.train()(torch.ones(1000, 1000))
    assert float((out == 0).float().mean()) == pytest.approx(0.25, abs=0.005)
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.75))
    assert torch.equal(drop.eval()(torch.ones(3, 3)), torch.ones(3, 3))
