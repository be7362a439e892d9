"""From a config node to a built object: `_target_` names the builder, the other keys are its
keyword arguments, and run-time objects (the model, the optimizer, the step count) are passed
in by the caller rather than interpolated in YAML."""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from trainer.errors import ConfigError

# The trick groups, in the order the summary lists them.
GROUPS = ("data", "model", "init", "norm", "regularisation", "optim", "sched", "clipping",
          "precision", "early_stopping")


def builder(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        raise ConfigError(f"_target_={target} does not name a builder") from None


def build(group: str, node: DictConfig, **runtime: Any) -> Any:
    """Call the builder that `node._target_` names with the node's keys and `runtime`.

    `name` (the choice's own name, recorded in the summary) is passed only to builders that
    take it. A key the builder does not take is a config error naming the valid keys.
    """
    kwargs = OmegaConf.to_container(node, resolve=True)
    assert isinstance(kwargs, dict)
    fn = builder(str(kwargs.pop("_target_")))
    accepted = inspect.signature(fn).parameters
    if "name" not in accepted:
        kwargs.pop("name", None)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        valid = sorted(set(accepted) - set(runtime))
        raise ConfigError(f"{group}.{unknown[0]} is not a setting of {group}={node.get('name')}; valid: {', '.join(valid)}")
    return fn(**kwargs, **runtime)


def choices(cfg: DictConfig) -> dict[str, str]:
    """The chosen option of every group, e.g. {"init": "he", "norm": "layernorm", ...}."""
    return {group: str(cfg[group].name) for group in GROUPS}
