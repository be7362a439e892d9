"""Weight initialisation, one scheme per `init=` choice.

Each scheme sets every Linear / Conv weight; biases start at zero, embeddings N(0, 0.01), and
normalisation layers keep their identity start (scale 1, shift 0). The gain follows the
model's activation (`nn.init.calculate_gain`), except the output layer (`model.head`), which
feeds no non-linearity and so gets the linear gain 1.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trainer.config import group_choices
from trainer.errors import ConfigError

SCHEMES = group_choices("init")  # conf/init/*.yaml
MODES = ("fan_in", "fan_out")
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


def gain_for(activation: str) -> float:
    """Gain of the activation, as in Glorot & Bengio (2010) and He et al. (2015).

    GELU has no entry in `calculate_gain`; it behaves like ReLU for positive inputs and is
    usually given ReLU's gain sqrt(2).
    """
    if activation == "gelu":
        return nn.init.calculate_gain("relu")
    if activation == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", 0.01)
    return nn.init.calculate_gain(activation)


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _weight_init(scheme: str, gain: float, mode: str, std: float) -> Callable[[torch.Tensor], None]:
    """The function that fills one weight tensor under `scheme`."""

    def fill(weight: torch.Tensor) -> None:
        fan_in, fan_out = _fans(weight)
        fan = fan_in if mode == "fan_in" else fan_out
        with torch.no_grad():
            if scheme == "zeros":
                weight.zero_()
            elif scheme == "normal":
                weight.normal_(0.0, std)
            elif scheme == "lecun_uniform":
                # LeCun et al. (1998, "Efficient BackProp" 4.6): std 1/sqrt(fan_in); for a uniform
                # U[-b, b] (std b/sqrt(3)) that is b = sqrt(3 / fan_in), not 1/sqrt(fan_in).
                bound = math.sqrt(3.0 / fan_in)
                weight.uniform_(-bound, bound)
            elif scheme == "xavier":  # U[-a, a], a = gain * sqrt(6 / (fan_in + fan_out))
                nn.init.xavier_uniform_(weight, gain)
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(weight, gain)
            elif scheme == "he":  # N(0, gain^2 / fan), He et al. (2015)
                weight.normal_(0.0, gain / math.sqrt(fan))
            elif scheme == "he_uniform":
                bound = gain * math.sqrt(3.0 / fan)
                weight.uniform_(-bound, bound)
            elif scheme == "orthogonal":  # Saxe et al. (2014)
                nn.init.orthogonal_(weight, gain)
            else:  # a conf/init/*.yaml without code here: never leave the weights silently as they were
                raise NotImplementedError(f"init={scheme} has a YAML in conf/init/ but no code in trainer/tricks/init.py")

    return fill


def initialise(
    model: nn.Module,
    name: str = "default",
    mode: str = "fan_in",
    std: float = 1.0,
    forget_bias: float = 1.0,
    recurrent_orthogonal: bool = True,
    path: str | None = None,
    strict: bool = True,
) -> nn.Module:
    """Initialise `model` in place with the scheme `name` and return it.

    Args:
        model: the freshly built model; its `activation` attribute names the non-linearity
            and its `head` attribute the output layer.
        name: the scheme, one of SCHEMES. `default` keeps PyTorch's own initialisation; `pretrained`
            loads weights from `path`.
        mode: "fan_in" preserves the forward signal's variance, "fan_out" the backward one
            (he and he_uniform only).
        std: standard deviation of the naive `normal` scheme.
        forget_bias: LSTM forget-gate bias (Jozefowicz et al. 2015 recommend 1) so the cell
            remembers by default; applies to the non-default schemes.
        recurrent_orthogonal: recurrent (hidden-to-hidden) weights orthogonal, which keeps
            their repeated product from exploding or vanishing (Saxe et al. 2014).
        path: a checkpoint or state_dict file, for `pretrained`.
        strict: for `pretrained`, whether every key must match.
    """
    scheme = name
    _check(scheme, mode, std, path)
    if scheme == "default":
        return model
    if scheme == "pretrained":
        return _load_pretrained(model, Path(path), strict)  # type: ignore[arg-type]
    activation = getattr(model, "activation", "relu")
    head = getattr(model, "head", None)
    for module in model.modules():
        if isinstance(module, WEIGHTED):
            gain = 1.0 if module is head else gain_for(activation)
            _weight_init(scheme, gain, mode, std)(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.01)
        elif isinstance(module, RECURRENT):
            _init_recurrent(module, scheme, gain_for(activation), mode, std, forget_bias, recurrent_orthogonal)
    return model


def _init_recurrent(
    rnn: nn.RNNBase, scheme: str, gain: float, mode: str, std: float, forget_bias: float, orthogonal: bool
) -> None:
    # `gain` is the model's activation's: tanh for LSTM and GRU (their builder accepts nothing else),
    # tanh or relu for a plain RNN, whose relu variant needs relu's sqrt(2), not a hard-coded tanh 5/3.
    fill = _weight_init(scheme, gain, mode, std)
    for name, param in rnn.named_parameters():
        if name.startswith("weight_ih"):
            fill(param)
        elif name.startswith("weight_hh"):
            if orthogonal and scheme != "zeros":
                # One orthogonal block per gate: the stacked matrix is (gates * hidden, hidden).
                for block in param.data.chunk(param.shape[0] // param.shape[1]):
                    nn.init.orthogonal_(block)
            else:
                fill(param)
        elif name.startswith("bias"):
            nn.init.zeros_(param)
            if isinstance(rnn, nn.LSTM) and name.startswith("bias_ih") and scheme != "zeros":
                hidden = rnn.hidden_size
                # PyTorch's gate order is input, forget, cell, output.
                param.data[hidden : 2 * hidden].fill_(forget_bias)


def _load_pretrained(model: nn.Module, path: Path, strict: bool) -> nn.Module:
    # weights_only=True: a checkpoint that carries pickled code is refused, never run.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or unsafe file
        raise ConfigError(f"init.path={path} could not be loaded as weights: {_first_line(error)}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a trainer checkpoint: the model's state_dict is under "model"
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as error:
        raise ConfigError(
            f"init.path={path} does not fit this model ({_first_line(error)}); "
            "build the same model, or set init.strict=false to load the matching part"
        ) from None
    return model


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check(scheme: str, mode: str, std: float, path: str | None) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(f"init={scheme!r} is unknown; valid: {', '.join(SCHEMES)}")
    if mode not in MODES:
        raise ConfigError(f"init.mode={mode!r} is unknown; valid: {', '.join(MODES)}")
    if std <= 0:
        raise ConfigError(f"init.std={std} must be > 0")
    if scheme == "pretrained":
        if not path:
            raise ConfigError("init=pretrained needs init.path=FILE (a checkpoint or state_dict)")
        if Path(path).is_dir():  # a run's folder, as distill.teacher and resume= take: this needs one of its files
            raise ConfigError(f"init.path={path} is a folder; give a checkpoint or state_dict file "
                              f"(a run's: {Path(path) / 'checkpoints' / 'best.pt'})")
        if not Path(path).is_file():
            raise ConfigError(f"init.path={path} does not exist; give a checkpoint or state_dict file")
