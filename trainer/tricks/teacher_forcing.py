"""Teacher forcing and scheduled sampling, one builder per `teacher_forcing=` choice.

With teacher forcing the decoder reads the true previous token while training; at test time it
reads its own predictions, which it never learnt to recover from. Scheduled sampling (Bengio et
al. 2015) feeds the true token with a probability eps_i that decays with the training step i, so
training moves from teacher forcing towards the conditions of inference:

    linear            eps_i = max(floor, k - c * i)
    exponential       eps_i = k ** i                    (k < 1)
    inverse_sigmoid   eps_i = k / (k + exp(i / k))      (k >= 1)

`constant` holds one ratio (1: pure teacher forcing, the default; 0: always the model's own).
Like the LR schedules, eps is a pure function of the optimizer step count; the count is this
object's state, saved in checkpoints, so a resumed run continues the decay where it stopped.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from torch import nn

from trainer.errors import ConfigError

# Pure ratio functions: the probability of feeding the true token at step `step` (0-based).

def linear_ratio(step: int, k: float, c: float, floor: float) -> float:
    return max(floor, k - c * step)


def exponential_ratio(step: int, k: float) -> float:
    return k**step


def inverse_sigmoid_ratio(step: int, k: float) -> float:
    exponent = step / k
    return 0.0 if exponent > 700 else k / (k + math.exp(exponent))  # exp overflows past ~709


class TeacherForcing:
    """Sets the model's `teacher_forcing_ratio` to ratio(step) before every optimizer step.

    Args:
        ratio: the pure function of the step count.
        model: a model with a `teacher_forcing_ratio` attribute (models/seq2seq.py), or None when
            the run's model has none (only the default, constant 1, is then accepted).
    """

    def __init__(self, name: str, ratio: Callable[[int], float], model: nn.Module | None) -> None:
        self.name, self.ratio, self.model, self.step = name, ratio, model, 0
        self._apply()

    def _apply(self) -> None:
        if self.model is not None:
            self.model.teacher_forcing_ratio = self.ratio(self.step)

    def step_end(self) -> None:
        self.step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self._apply()


def _target(model: nn.Module, name: str, is_default: bool) -> nn.Module | None:
    """The model whose decoder takes the ratio; a non-default choice for a model without one is an error."""
    if hasattr(model, "teacher_forcing_ratio"):
        return model
    if not is_default:
        raise ConfigError(f"teacher_forcing={name} needs a decoder that reads its previous token: use model=seq2seq")
    return None


def _check_probability(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"teacher_forcing.{key}={value} must be in [0, 1] (a probability)")


# Builders named by conf/teacher_forcing/*.yaml; the runtime argument is the model.

def constant(model: nn.Module, ratio: float = 1.0) -> TeacherForcing:
    _check_probability("ratio", ratio)
    return TeacherForcing("constant", lambda step: float(ratio), _target(model, "constant", ratio == 1.0))


def linear(model: nn.Module, k: float = 1.0, c: float = 1e-3, floor: float = 0.0) -> TeacherForcing:
    _check_probability("k", k)
    _check_probability("floor", floor)
    if c < 0:
        raise ConfigError(f"teacher_forcing.c={c} must be >= 0 (the decrease per step)")
    return TeacherForcing("linear", lambda step: linear_ratio(step, k, c, floor), _target(model, "linear", False))


def exponential(model: nn.Module, k: float = 0.999) -> TeacherForcing:
    if not 0.0 < k <= 1.0:
        raise ConfigError(f"teacher_forcing.k={k} must be in (0, 1] (eps = k ** step)")
    return TeacherForcing("exponential", lambda step: exponential_ratio(step, k), _target(model, "exponential", False))


def inverse_sigmoid(model: nn.Module, k: float = 100.0) -> TeacherForcing:
    if k < 1:
        raise ConfigError(f"teacher_forcing.k={k} must be >= 1 (eps = k / (k + exp(step / k)))")
    return TeacherForcing("inverse_sigmoid", lambda step: inverse_sigmoid_ratio(step, k),
                          _target(model, "inverse_sigmoid", False))
