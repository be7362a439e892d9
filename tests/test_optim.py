"""Optimizers: each name gives the torch class and hyper-parameters it stands for, weight decay
reaches the weight matrices only, and AdamW's decay is decoupled (Loshchilov & Hutter 2019)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from helpers import CONF_DIR
from trainer.errors import ConfigError
from trainer.models import mlp
from trainer.tricks import optim
from trainer.tricks.norm import factory

CONF = Path(CONF_DIR) / "optim"


def make_model(norm: str = "layernorm", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return mlp.build(input_shape=(6,), num_outputs=3, norm=factory(norm), dropout=0.0, input_dropout=0.0,
                     activation="relu", depth=2, width=8)


@pytest.mark.parametrize(
    ("name", "cls", "expected"),
    [
        ("sgd", torch.optim.SGD, {"momentum": 0, "nesterov": False}),
        ("momentum", torch.optim.SGD, {"momentum": 0.8, "nesterov": False}),
        ("nesterov", torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
        ("adam", torch.optim.Adam, {"betas": (0.8, 0.99), "eps": 1e-7}),
        ("adamw", torch.optim.AdamW, {"betas": (0.8, 0.99), "eps": 1e-7}),
        ("rmsprop", torch.optim.RMSprop, {"alpha": 0.95, "eps": 1e-7, "momentum": 0.8}),
    ],
)
def test_builds_the_right_class(name: str, cls: type, expected: dict[str, Any]) -> None:
    opt = optim.build(make_model(), name, lr=0.03, momentum=0.8, betas=(0.8, 0.99), eps=1e-7, alpha=0.95)
    assert type(opt) is cls  # exact: AdamW is a subclass of Adam
    for group in opt.param_groups:
        assert group["lr"] == 0.03
        for key, value in expected.items():
            assert group[key] == value, key


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_yaml_configs_build(name: str) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert isinstance(cfg, dict) and cfg.pop("_target_") == "trainer.tricks.optim.build"
    opt = optim.build(make_model(), **cfg)  # type: ignore[arg-type]
    assert opt.param_groups[0]["lr"] == cfg["lr"]


def test_weight_decay_only_on_matrices() -> None:
    model = make_model()
    opt = optim.build(model, "adamw", lr=1e-3, weight_decay=0.1)
    decay = [g for g in opt.param_groups if g["weight_decay"] == 0.1]
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0]
    assert len(decay) == 1 and len(no_decay) == 1
    matrices = {id(p) for p in model.parameters() if p.ndim >= 2}
    vectors = {id(p) for p in model.parameters() if p.ndim < 2}
    assert {id(p) for p in decay[0]["params"]} == matrices
    assert {id(p) for p in no_decay[0]["params"]} == vectors
    norm_scale = model.body[2].weight  # the first LayerNorm's scale
    assert isinstance(model.body[2], nn.LayerNorm) and id(norm_scale) in vectors


def test_decay_norm_and_bias_decays_everything() -> None:
    model = make_model()
    opt = optim.build(model, "sgd", lr=0.1, weight_decay=0.1, decay_norm_and_bias=True)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


def test_no_weight_decay_single_group() -> None:
    opt = optim.build(make_model(), "sgd", lr=0.1)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.0


def zero_grad_step(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """One step with every gradient exactly zero: whatever moves, weight decay moved it."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return before


def test_sgd_weight_decay_skips_biases_and_norms() -> None:
    lr, wd = 0.1, 0.5
    model = make_model()
    before = zero_grad_step(model, optim.build(model, "sgd", lr=lr, weight_decay=wd))
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            torch.testing.assert_close(p.detach(), before[name] * (1 - lr * wd), msg=name)
        else:
            assert torch.equal(p.detach(), before[name]), name
    model = make_model()
    before = zero_grad_step(model, optim.build(model, "sgd", lr=lr, weight_decay=wd, decay_norm_and_bias=True))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] * (1 - lr * wd), msg=name)


def test_adamw_decay_is_decoupled_adam_decay_is_coupled() -> None:
    lr, wd = 0.01, 0.1
    model = make_model()
    before = zero_grad_step(model, optim.build(model, "adamw", lr=lr, weight_decay=wd))
    for name, p in model.named_parameters():
        if p.ndim >= 2:  # decoupled: w <- w (1 - lr wd), independent of the gradient statistics
            torch.testing.assert_close(p.detach(), before[name] * (1 - lr * wd), msg=name)
        else:
            assert torch.equal(p.detach(), before[name]), name
    model = make_model()
    before = zero_grad_step(model, optim.build(model, "adam", lr=lr, weight_decay=wd))
    weight = model.body[1].weight
    # coupled: the gradient becomes wd * w, and Adam's first step normalises it to lr * sign(w): the
    # shrinkage no longer depends on wd or |w|.
    torch.testing.assert_close(weight.detach(), before["body.1.weight"] - lr * before["body.1.weight"].sign(),
                               rtol=1e-4, atol=1e-6)
    shrink = before["body.1.weight"] - weight.detach()
    assert not torch.allclose(shrink, before["body.1.weight"] * lr * wd, atol=1e-6)


def test_momentum_and_nesterov_differ_from_sgd() -> None:
    """Same gradients twice: heavy ball adds momentum * v, Nesterov looks ahead one more momentum step."""
    lr, mu = 0.1, 0.9
    moved = {}
    for name in ("sgd", "momentum", "nesterov"):
        w = nn.Parameter(torch.zeros(1))
        opt = optim.build(nn.ParameterList([w]), name, lr=lr, momentum=mu)
        for _ in range(2):
            w.grad = torch.ones(1)
            opt.step()
        moved[name] = -float(w.detach())
    assert moved["sgd"] == pytest.approx(2 * lr)
    assert moved["momentum"] == pytest.approx(lr * (1 + (1 + mu)))  # v1 = 1, v2 = 1 + mu
    # Nesterov: step = g + mu * v: (1 + mu) then (1 + mu (1 + mu))
    assert moved["nesterov"] == pytest.approx(lr * ((1 + mu) + (1 + mu * (1 + mu))))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"name": "lamb"}, "optim='lamb'"),
        ({"lr": 0.0}, "optim.lr"),
        ({"lr": -0.1}, "optim.lr"),
        ({"weight_decay": -1e-4}, "optim.weight_decay"),
        ({"momentum": 1.0}, "optim.momentum"),
        ({"momentum": -0.1}, "optim.momentum"),
        ({"betas": (0.9, 1.0)}, "optim.betas"),
        ({"betas": (0.9,)}, "optim.betas"),
        ({"eps": 0.0}, "optim.eps"),
        ({"alpha": 1.0}, "optim.alpha"),
        ({"name": "nesterov", "momentum": 0.0}, "optim.momentum"),
    ],
)
def test_bad_args(kw: dict[str, Any], match: str) -> None:
    args = {"name": "sgd", "lr": 0.1, **kw}
    with pytest.raises(ConfigError, match=match):
        optim.build(make_model(), **args)
