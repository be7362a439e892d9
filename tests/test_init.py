"""Weight initialisation: every scheme draws from the distribution its paper gives.

Statistics use layers of 10^5..10^6 weights, so a sample std is within ~0.3% of the true one and a
2% tolerance still catches any wrong factor (sqrt(2), sqrt(3), fan_in vs fan_out).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fakes import PlantsMarker
from trainer.data import synthetic
from trainer.errors import ConfigError
from trainer.models import cnn, mlp, rnn
from trainer.tricks.init import SCHEMES, gain_for, initialise
from trainer.tricks.norm import factory

RELU_GAIN = math.sqrt(2.0)
REL = 0.02  # relative tolerance on a std or bound estimated from >= 10^5 samples


def make_mlp(
    inputs: int = 1024, width: int = 1024, outputs: int = 10, depth: int = 1,
    activation: str = "relu", norm: str = "none", seed: int = 0,
) -> nn.Module:
    torch.manual_seed(seed)
    return mlp.build(input_shape=(inputs,), num_outputs=outputs, norm=factory(norm), dropout=0.0,
                     input_dropout=0.0, activation=activation, depth=depth, width=width)


def linears(model: nn.Module) -> list[nn.Linear]:
    """The hidden Linear layers (the head excluded), in order."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m is not model.head]


def assert_std(weight: torch.Tensor, expected: float) -> None:
    assert weight.mean().abs().item() < 0.01 * expected + 1e-4, "weights should be centred on 0"
    assert weight.std().item() == pytest.approx(expected, rel=REL)


def assert_uniform_bound(weight: torch.Tensor, bound: float) -> None:
    """Every |w| within the bound, the largest right at it, and the std that of U[-b, b]."""
    biggest = weight.abs().max().item()
    assert biggest <= bound * (1 + 1e-6)
    assert biggest >= bound * 0.995
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=REL)


# --- he / he_uniform ---------------------------------------------------------------------------


def test_he_normal_std_is_gain_over_sqrt_fan_in() -> None:
    model = initialise(make_mlp(inputs=1024, width=1024, depth=2), "he")
    for layer in linears(model):
        assert_std(layer.weight, RELU_GAIN / math.sqrt(1024))


def test_he_fan_out_mode_uses_fan_out() -> None:
    # First layer is (out=1024, in=256): fan_in and fan_out differ by 4x, so the stds by 2x.
    layer = linears(initialise(make_mlp(inputs=256, width=1024), "he", mode="fan_out"))[0]
    assert_std(layer.weight, RELU_GAIN / math.sqrt(1024))
    layer = linears(initialise(make_mlp(inputs=256, width=1024), "he", mode="fan_in"))[0]
    assert_std(layer.weight, RELU_GAIN / math.sqrt(256))


def test_he_conv_fan_in_counts_the_kernel() -> None:
    torch.manual_seed(0)
    model = cnn.build(input_shape=(64, 8, 8), num_outputs=10, norm=factory("none"), dropout=0.0,
                      input_dropout=0.0, activation="relu", channels=[256])
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.shape == (256, 64, 3, 3)
    initialise(model, "he")
    assert_std(conv.weight, RELU_GAIN / math.sqrt(64 * 9))  # not 1/sqrt(64): the 3x3 kernel counts
    initialise(model, "he", mode="fan_out")
    assert_std(conv.weight, RELU_GAIN / math.sqrt(256 * 9))


def test_he_uniform_bound() -> None:
    model = initialise(make_mlp(inputs=1024, width=1024), "he_uniform")
    weight = linears(model)[0].weight
    # U[-b, b] with b = gain * sqrt(3 / fan_in) has the same variance as he normal: gain^2 / fan_in.
    assert_uniform_bound(weight, RELU_GAIN * math.sqrt(3.0 / 1024))
    assert weight.std().item() == pytest.approx(RELU_GAIN / math.sqrt(1024), rel=REL)


# --- xavier / lecun / orthogonal / normal --------------------------------------------------------


def test_xavier_uniform_bound() -> None:
    model = initialise(make_mlp(inputs=512, width=1024), "xavier")
    weight = linears(model)[0].weight  # fan_in 512, fan_out 1024
    assert_uniform_bound(weight, RELU_GAIN * math.sqrt(6.0 / (512 + 1024)))


def test_xavier_normal_std() -> None:
    model = initialise(make_mlp(inputs=512, width=1024), "xavier_normal")
    assert_std(linears(model)[0].weight, RELU_GAIN * math.sqrt(2.0 / (512 + 1024)))


def test_lecun_uniform_has_std_one_over_sqrt_fan_in() -> None:
    # LeCun et al. (1998, "Efficient BackProp", 4.6): zero mean and std fan_in^-1/2; uniform, that is
    # U[-sqrt(3 / fan_in), +sqrt(3 / fan_in)]. The activation's gain plays no part.
    for activation in ("relu", "tanh"):
        model = initialise(make_mlp(inputs=512, width=1024, activation=activation), "lecun_uniform")
        weight = linears(model)[0].weight
        assert_uniform_bound(weight, math.sqrt(3.0 / 512))
        assert weight.std().item() == pytest.approx(1 / math.sqrt(512), rel=REL)


def test_orthogonal_tall_square_and_wide() -> None:
    # Layers: (512, 256) tall, (512, 512) square, head (10, 512) wide with gain 1.
    model = initialise(make_mlp(inputs=256, width=512, depth=2), "orthogonal")
    tall, square = (layer.weight.detach() for layer in linears(model))
    gain2 = 2.0  # relu gain squared
    torch.testing.assert_close(tall.T @ tall, gain2 * torch.eye(256), atol=1e-4, rtol=0)
    torch.testing.assert_close(square.T @ square, gain2 * torch.eye(512), atol=1e-4, rtol=0)
    torch.testing.assert_close(square @ square.T, gain2 * torch.eye(512), atol=1e-4, rtol=0)
    head = model.head.weight.detach()
    torch.testing.assert_close(head @ head.T, torch.eye(10), atol=1e-4, rtol=0)


def test_normal_uses_std_whatever_the_fan() -> None:
    for std in (1.0, 0.05):
        model = initialise(make_mlp(inputs=256, width=1024), "normal", std=std)
        assert_std(linears(model)[0].weight, std)


# --- rules shared by the schemes ---------------------------------------------------------------


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s not in ("default", "pretrained")])
def test_biases_start_at_zero(scheme: str) -> None:
    model = make_mlp(inputs=16, width=32, depth=2)
    assert all(layer.bias.abs().sum() > 0 for layer in linears(model)), "PyTorch's default bias is not zero"
    initialise(model, scheme)
    biases = [layer.bias for layer in linears(model)] + [model.head.bias]
    assert all(torch.count_nonzero(b) == 0 for b in biases)


def test_head_gets_linear_gain() -> None:
    model = initialise(make_mlp(inputs=1024, width=1024, outputs=1024), "he")
    assert_std(linears(model)[0].weight, RELU_GAIN / math.sqrt(1024))
    assert_std(model.head.weight, 1.0 / math.sqrt(1024))


@pytest.mark.parametrize(
    ("activation", "gain"),
    [
        ("relu", math.sqrt(2.0)),
        ("tanh", 5.0 / 3.0),
        ("sigmoid", 1.0),
        ("leaky_relu", math.sqrt(2.0 / (1 + 0.01**2))),
        ("gelu", math.sqrt(2.0)),
    ],
)
def test_gain_follows_activation(activation: str, gain: float) -> None:
    assert gain_for(activation) == pytest.approx(gain)
    model = initialise(make_mlp(inputs=1024, width=1024, activation=activation), "he")
    assert_std(linears(model)[0].weight, gain / math.sqrt(1024))


def test_default_leaves_pytorch_init_untouched() -> None:
    fresh = make_mlp(inputs=64, width=64, depth=2, seed=7)
    model = initialise(make_mlp(inputs=64, width=64, depth=2, seed=7), "default")
    for (name, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    # and the comparison can fail: another scheme does change them
    changed = initialise(make_mlp(inputs=64, width=64, depth=2, seed=7), "he")
    assert not torch.equal(changed.head.weight, fresh.head.weight)


def test_zeros_never_breaks_symmetry() -> None:
    """All-zero weights: every hidden unit of a layer gets the same gradient, so they stay copies.

    Sigmoid (0.5 at zero, unlike relu or tanh) makes the gradients non-zero, so the layers do train.
    """
    data = synthetic.build(num_train=256, num_val=1, length=20)
    torch.manual_seed(0)
    model = mlp.build(input_shape=(1, 20), num_outputs=4, norm=factory("none"), dropout=0.0,
                      input_dropout=0.0, activation="sigmoid", depth=2, width=16)
    initialise(model, "zeros")
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    for _ in range(5):  # epochs of 8 batches
        for start in range(0, 256, 32):
            x, y = data.x_train[start:start + 32], data.y_train[start:start + 32]
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for layer in linears(model):
        assert layer.weight.abs().max() > 0.05, "the layer should have trained"
        # every unit (row) equal to the first: the units are still indistinguishable
        torch.testing.assert_close(layer.weight, layer.weight[:1].expand_as(layer.weight), atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.bias, layer.bias[:1].expand_as(layer.bias), atol=1e-6, rtol=0)
    # The head's inputs are identical units, so its columns are copies too.
    head = model.head.weight
    torch.testing.assert_close(head, head[:, :1].expand_as(head), atol=1e-6, rtol=0)


def test_deep_relu_mlp_signal_he_preserved_normal_explodes() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 256)

    def last_hidden(scheme: str) -> torch.Tensor:
        model = initialise(make_mlp(inputs=256, width=256, depth=20), scheme)
        with torch.no_grad():
            return model.body(x)  # the 20th hidden layer's activations

    ratio_he = last_hidden("he").std().item() / x.std().item()
    assert 1 / 3 < ratio_he < 3
    ratio_normal = last_hidden("normal").std().item() / x.std().item()
    assert ratio_normal > 1e12  # each layer multiplies the variance by ~width / 2 = 128: ~1e21 in all


# --- recurrent nets ----------------------------------------------------------------------------


def make_rnn(cell: str, hidden: int, inputs: int = 8, activation: str = "tanh", layers: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return rnn.build(input_shape=(inputs, 5), num_outputs=3, norm=factory("none"), dropout=0.0,
                     input_dropout=0.0, activation=activation, cell=cell, hidden=hidden, layers=layers)


def test_lstm_forget_bias_and_orthogonal_recurrent_blocks() -> None:
    hidden = 64
    model = initialise(make_rnn("lstm", hidden, layers=2), "he", forget_bias=2.0)
    for layer in range(2):
        bias_ih = getattr(model.rnn, f"bias_ih_l{layer}").detach()
        bias_hh = getattr(model.rnn, f"bias_hh_l{layer}").detach()
        # gate order input, forget, cell, output: only the forget slice is set, and only once
        # (bias_ih + bias_hh is what the gate sees)
        assert torch.all(bias_ih[hidden:2 * hidden] == 2.0)
        assert torch.count_nonzero(bias_ih[:hidden]) == 0
        assert torch.count_nonzero(bias_ih[2 * hidden:]) == 0
        assert torch.count_nonzero(bias_hh) == 0
        weight_hh = getattr(model.rnn, f"weight_hh_l{layer}").detach()
        for block in weight_hh.chunk(4):
            torch.testing.assert_close(block.T @ block, torch.eye(hidden), atol=1e-4, rtol=0)
        assert not torch.allclose(weight_hh[:hidden], weight_hh[hidden:2 * hidden]), "one matrix per gate"


def test_lstm_input_weights_use_tanh_gain() -> None:
    model = initialise(make_rnn("lstm", hidden=256, inputs=1024), "he")
    assert_std(model.rnn.weight_ih_l0, (5.0 / 3.0) / math.sqrt(1024))


def test_relu_rnn_uses_relu_gain() -> None:
    # A plain RNN with relu: the input weights feed a relu, so He's sqrt(2) (not tanh's 5/3) applies.
    model = initialise(make_rnn("rnn", hidden=256, inputs=1024, activation="relu"), "he")
    assert_std(model.rnn.weight_ih_l0, RELU_GAIN / math.sqrt(1024))


def test_recurrent_orthogonal_off_uses_the_scheme() -> None:
    model = initialise(make_rnn("gru", hidden=512), "normal", std=0.5, recurrent_orthogonal=False)
    assert_std(model.rnn.weight_hh_l0, 0.5)


# --- pretrained --------------------------------------------------------------------------------


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("wrap", [False, True], ids=["state_dict", "checkpoint"])
def test_pretrained_loads_state_dict_and_checkpoint(tmp_path: Path, wrap: bool) -> None:
    source = make_mlp(inputs=16, width=32, seed=1)
    state: Any = source.state_dict()
    if wrap:
        state = {"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    target = make_mlp(inputs=16, width=32, seed=2)
    assert not torch.equal(target.head.weight, source.head.weight)
    initialise(target, "pretrained", path=str(path))
    assert_same_weights(source, target)


def test_pretrained_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        initialise(make_mlp(inputs=4, width=4), "pretrained", path=str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="init.path"):
        initialise(make_mlp(inputs=4, width=4), "pretrained", path=None)
    with pytest.raises(ConfigError, match=f"init.path={tmp_path} is a folder; give a checkpoint or state_dict file"):
        initialise(make_mlp(inputs=4, width=4), "pretrained", path=str(tmp_path))  # it said "does not exist"


def test_pretrained_refuses_pickled_code(tmp_path: Path) -> None:
    # The payload works: loading it without weights_only creates the marker.
    probe = tmp_path / "probe"
    torch.save({"model": PlantsMarker(probe)}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": PlantsMarker(marker)}, path)
    with pytest.raises(ConfigError, match="could not be loaded"):
        initialise(make_mlp(inputs=4, width=4), "pretrained", path=str(path))
    assert not marker.exists()


def test_pretrained_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not be loaded"):
        initialise(make_mlp(inputs=4, width=4), "pretrained", path=str(path))


def test_pretrained_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "small.pt"
    torch.save(make_mlp(inputs=16, width=32).state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit"):
        initialise(make_mlp(inputs=16, width=64), "pretrained", path=str(path))
    # missing keys: strict refuses, strict=false loads the part that matches
    deeper = make_mlp(inputs=16, width=32, depth=2, seed=3)
    with pytest.raises(ConfigError, match="does not fit"):
        initialise(deeper, "pretrained", path=str(path))
    torch.save(make_mlp(inputs=16, width=32, depth=2, seed=4).state_dict(), path)
    shallow = make_mlp(inputs=16, width=32, depth=1, seed=5)
    source_first = torch.load(path)["body.1.weight"]
    initialise(shallow, "pretrained", path=str(path), strict=False)
    assert torch.equal(shallow.body[1].weight, source_first)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "kaiming"}, "init='kaiming'"),
        ({"name": "he", "mode": "fan_avg"}, "init.mode"),
        ({"name": "normal", "std": 0.0}, "init.std"),
    ],
)
def test_bad_args(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        initialise(make_mlp(inputs=4, width=4), **kwargs)
