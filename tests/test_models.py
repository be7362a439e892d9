"""Model builders: output shapes under every norm, the `head`/`activation` contract, bias only where
no batchnorm follows, plain vs residual ResNet, dropout, argument errors and the YAML configs."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hydra.utils import get_method
from omegaconf import OmegaConf
from torch import nn

from helpers import CONF_DIR
from trainer.errors import ConfigError
from trainer.models import cnn, cnn1d, mlp, resnet, rnn
from trainer.models.activations import ACTIVATIONS, make_activation
from trainer.tricks.norm import NORMS, factory

CONF = Path(CONF_DIR) / "model"
Builder = Callable[..., nn.Module]
RUNTIME = {"input_shape", "num_outputs", "norm", "dropout", "input_dropout", "vocab_size"}  # vocab_size: from the data, for models of character ids
TOKEN_MODELS = {"char_lstm", "char_probe", "seq2seq"}  # read token ids, not signals or images

# (builder, input_shape, small own args); widths divisible by groups=4 so groupnorm builds.
CASES: dict[str, tuple[Builder, tuple[int, ...], dict[str, Any]]] = {
    "mlp": (mlp.build, (1, 40), {"depth": 3, "width": 16}),
    "mlp_image": (mlp.build, (3, 8, 8), {"width": 16}),
    "cnn1d": (cnn1d.build, (1, 40), {"channels": 8}),
    "cnn": (cnn.build, (3, 16, 16), {"channels": [8, 16]}),
    "resnet1d": (resnet.build, (1, 40), {"width": 4, "stages": 3}),
    "resnet2d": (resnet.build, (3, 16, 16), {"width": 4, "stages": 2}),
    "lstm": (rnn.build, (2, 12), {"cell": "lstm", "hidden": 8, "layers": 2}),
    "gru": (rnn.build, (2, 12), {"cell": "gru", "hidden": 8}),
    "rnn": (rnn.build, (2, 12), {"cell": "rnn", "hidden": 8}),
}


def call(builder: Builder, shape: tuple[int, ...], norm: str = "none", **kw: Any) -> nn.Module:
    """builder with the runtime args the lead's code passes; defaults: 3 outputs, no dropout."""
    runtime = {"num_outputs": 3, "dropout": 0.0, "input_dropout": 0.0}
    runtime["activation"] = "tanh" if builder is rnn.build else "relu"
    return builder(input_shape=shape, norm=factory(norm, groups=4), **{**runtime, **kw})


def make(case: str, norm: str = "none", **kw: Any) -> nn.Module:
    builder, shape, args = CASES[case]
    return call(builder, shape, norm, **{**args, **kw})


def batch(case: str, n: int = 4) -> torch.Tensor:
    return torch.randn(n, *CASES[case][1])


def leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("case", CASES)
def test_forward_shape_and_head(case: str, norm: str) -> None:
    torch.manual_seed(0)
    model = make(case, norm)
    out = model(batch(case))
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert model.head is linears[-1] and model.head.out_features == 3
    assert model.activation == ("tanh" if case in ("lstm", "gru", "rnn") else "relu")


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm", "none"])
@pytest.mark.parametrize("case", CASES)
def test_bias_only_where_no_batchnorm_follows(case: str, norm: str) -> None:
    mods = leaves(make(case, norm))
    checked = 0
    for layer, following in zip(mods, mods[1:]):
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            assert (layer.bias is None) == isinstance(following, nn.modules.batchnorm._BatchNorm)
            checked += 1
    assert checked or case in ("lstm", "gru", "rnn")


def test_deep_mlp_builds() -> None:
    model = call(mlp.build, (10,), "batchnorm", depth=20, width=32)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 21
    assert model(torch.randn(4, 10)).shape == (4, 3)


def test_cnn1d_matches_mnist1d_convbase() -> None:
    # Greydanus 2020: 25 channels, lengths 40 -> 19 -> 10 -> 5, so the head takes 125 features.
    model = call(cnn1d.build, (1, 40), channels=25)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0], c.out_channels) for c in convs] == [
        (5, 2, 1, 25), (3, 2, 1, 25), (3, 2, 1, 25)
    ]
    assert model.head.in_features == 125


def test_cnn_accepts_listconfig() -> None:
    model = make("cnn", channels=OmegaConf.create([4, 8, 12]))
    assert model.head.in_features == 12 and model(batch("cnn")).shape == (4, 3)


def test_resnet18_parameter_count() -> None:
    # The CIFAR ResNet-18 (3x3 stem, bias-free convs before batchnorm) has 11,173,962 parameters
    # for 10 classes (e.g. kuangliu/pytorch-cifar).
    model = call(resnet.build, (3, 32, 32), "batchnorm", num_outputs=10, depth=2, width=64, stages=4)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


@pytest.mark.parametrize("case", ["resnet1d", "resnet2d"])
def test_plain_resnet_same_layers_different_function(case: str) -> None:
    torch.manual_seed(0)
    with_skip, plain = make(case, "batchnorm"), make(case, "batchnorm", residual=False)
    plain.load_state_dict(with_skip.state_dict())  # strict: same layers, same names
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in with_skip.parameters())
    x = batch(case)
    assert not torch.allclose(with_skip.eval()(x), plain.eval()(x))


@pytest.mark.parametrize("case", CASES)
def test_dropout_present_iff_positive_and_off_in_eval(case: str) -> None:
    assert not any(isinstance(m, nn.Dropout) for m in make(case).modules())
    torch.manual_seed(0)
    model = make(case, dropout=0.5, input_dropout=0.2)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and drops[0].p == 0.2 and all(m.p == 0.5 for m in drops[1:])
    x = batch(case)
    model.train()
    assert not torch.equal(model(x), model(x))
    evaluated = model.eval()(x)
    assert torch.equal(evaluated, model(x))
    for m in drops:  # eval must equal training with dropout switched off
        m.p = 0.0
    if case == "lstm":  # nn.LSTM's own inter-layer dropout, also off in eval
        model.rnn.dropout = 0.0
    torch.testing.assert_close(model.train()(x), evaluated)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_build(name: str) -> None:
    assert make_activation(name)(torch.zeros(2)).shape == (2,)
    assert call(mlp.build, (4,), activation=name).activation == name


@pytest.mark.parametrize(
    ("case", "kw", "needle"),
    [
        ("mlp", {"depth": 0}, "model.depth=0"),
        ("mlp", {"width": 0}, "model.width=0"),
        ("mlp", {"dropout": 1.0}, "dropout=1.0"),
        ("mlp", {"input_dropout": -0.1}, "input_dropout=-0.1"),
        ("mlp", {"activation": "swish"}, "'swish'"),
        ("cnn1d", {"channels": 0}, "model.channels=0"),
        ("cnn", {"channels": []}, "model.channels=[]"),
        ("cnn", {"channels": [8, 8, 8, 8, 8]}, "(3, 16, 16)"),
        ("resnet2d", {"stages": 0}, "model.stages=0"),
        ("resnet1d", {"depth": 0}, "model.depth=0"),
        ("lstm", {"cell": "transformer"}, "'transformer'"),
        ("lstm", {"hidden": 0}, "model.hidden=0"),
        ("gru", {"layers": 0}, "model.layers=0"),
        ("lstm", {"activation": "relu"}, "'relu'"),
        ("rnn", {"activation": "gelu"}, "'gelu'"),
    ],
)
def test_bad_args_raise_config_error(case: str, kw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        make(case, **kw)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("builder", "shape", "needle"),
    [
        (cnn.build, (1, 40), "model=cnn needs images (C, H, W); this data set gives input_shape (1, 40): "
         "use model=cnn1d, mlp, resnet or rnn"),
        (cnn1d.build, (1, 28, 28), "use model=cnn, mlp or resnet"),
        (rnn.build, (40,), "use model=mlp"),
        (resnet.build, (40,), "model=resnet needs sequences (C, L) or images (C, H, W)"),
        (cnn1d.build, (1, 2), "length >= 3"),
    ],
)
def test_unsuitable_input_shape(builder: Builder, shape: tuple[int, ...], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        call(builder, shape)
    assert needle in str(err.value)


def test_groupnorm_width_mismatch_is_config_error() -> None:
    # The paper's 25 channels are not divisible by groupnorm's default 8 groups.
    with pytest.raises(ConfigError, match="width 25"):
        cnn1d.build(
            input_shape=(1, 40), num_outputs=10, norm=factory("groupnorm"), dropout=0.0, input_dropout=0.0,
            activation="relu", channels=25,
        )


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_yaml_matches_builder(path: Path) -> None:
    text = path.read_text()
    assert text.startswith(f"# {path.stem}: ")
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg.pop("name") == path.stem
    builder = get_method(cfg.pop("_target_"))
    params = inspect.signature(builder).parameters
    own = {k: p.default for k, p in params.items() if k not in RUNTIME | {"activation"}}
    assert "name" not in params and set(cfg) == set(own) | {"activation"}
    if path.stem != "resnet18":
        assert {k: v for k, v in cfg.items() if k != "activation"} == {
            k: list(v) if isinstance(v, tuple) else v for k, v in own.items()
        }
    if path.stem in TOKEN_MODELS:  # their forward contracts: tests/test_char_lm.py, tests/test_seq2seq.py
        return
    shape = (3, 32, 32) if path.stem in ("cnn", "resnet", "resnet18") else (1, 40)
    model = builder(
        input_shape=shape, num_outputs=10, norm=factory("batchnorm"), dropout=0.1, input_dropout=0.0, **cfg
    )
    assert model.eval()(torch.randn(2, *shape)).shape == (2, 10)


def test_resnet18_yaml() -> None:
    cfg = OmegaConf.load(CONF / "resnet18.yaml")
    assert (cfg.depth, cfg.stages, cfg.width, cfg.residual) == (2, 4, 64, True)
