"""From a config node to a built object: `_target_` names the builder, the other keys are its
keyword arguments, and run-time objects (the model, the optimizer, the step count) are passed
in by the caller rather than interpolated in YAML."""
from __future__ import annotations

import importlib
import inspect
import math
import types
import typing
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from trainer.errors import ConfigError


def config_root() -> Path:
    """The Hydra config root, `conf/`: inside the package in a built wheel (pyproject.toml maps the
    top-level folder to `trainer/conf` there), beside the package in a clone or an editable install.
    Found by path, not by import, so a checkout on PYTHONPATH uses its own YAMLs."""
    package = Path(__file__).parent
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


# The trick groups, in the order the summary lists them.
GROUPS = ("data", "model", "init", "norm", "regularisation", "optim", "sched", "clipping",
          "precision", "early_stopping", "augment", "distill", "teacher_forcing", "decoding")


# Training computes in float32 (or narrower): a larger number becomes inf in the first multiplication.
FLOAT32_MAX = 3.4028234663852886e38
INT64_MAX = 2**63 - 1  # the largest step count or size a tensor index can hold
SEED_MAX = 2**32 - 1  # NumPy's seed range, the narrowest of Python's, NumPy's and torch's


def check_numbers(cfg: DictConfig) -> None:
    """One rule for every number in the config, whatever key holds it: finite, and within float32's
    range (floats) or int64's (integers); the seed within NumPy's range. Each key's own range
    (lr > 0, dropout in [0, 1)) is its builder's to check."""
    for key, value in flatten(OmegaConf.to_container(cfg, resolve=True), into_lists=True).items():
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            raise ConfigError(f"{key}={value} must be a finite number of magnitude at most 3.4e38 "
                              "(float32's range, which training computes in)")
        if isinstance(value, int) and abs(value) > INT64_MAX:
            raise ConfigError(f"{key}={value} is too large: integers must be at most 2**63-1")
    seed = cfg.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed={seed} must be an integer from 0 to {SEED_MAX} (2**32-1, NumPy's seed range)")


def flatten(node: Any, into_lists: bool = False) -> dict[str, Any]:
    """{dotted key: leaf} of a plain container (OmegaConf.to_container's): `optim.lr`; with
    `into_lists`, each list item too (`optim.betas[0]`), else a list is one leaf. An empty mapping
    is a leaf of its own. The sweep's job fingerprint is computed from this: keep it stable."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
        elif into_lists and isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{key}[{index}]")
        else:
            flat[key] = value

    walk(node, "")
    return flat


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
    settings = set(accepted) - set(runtime)
    shipped = _shipped_settings(group, node.get("name"))
    if shipped is not None:  # a builder several choices share (optim, init, norm) takes their settings combined
        settings &= shipped
    unknown = sorted(set(kwargs) - settings - {"name"})
    if unknown:
        valid = sorted(settings - {"name"})
        raise ConfigError(f"{group}.{unknown[0]} is not a setting of {group}={node.get('name')}; "
                          f"valid: {', '.join(valid) or 'none, it takes no settings'}")
    required = [key for key, parameter in accepted.items() if parameter.default is parameter.empty
                 and parameter.kind is not parameter.VAR_KEYWORD and key not in kwargs and key not in runtime]
    if required:  # removed with `~group.key`, or a YAML that lacks it
        raise ConfigError(f"{group}.{required[0]} is missing: {group}={node.get('name')} needs it; "
                          f"set it ({group}.{required[0]}=...) instead of removing it")
    hints = _type_hints(fn)
    for key, value in kwargs.items():
        if key in hints and not _fits(value, hints[key]):
            raise ConfigError(f"{group}.{key}={value!r} must be {_describe(hints[key])}")
    return fn(**kwargs, **runtime)


def _shipped_settings(group: str, name: Any) -> set[str] | None:
    """The settings conf/<group>/<name>.yaml lists, or None for a choice that is not shipped (a
    user's own, from --config-dir). `+optim.momentum=0.9` with optim=adamw reaches a builder that
    takes momentum for SGD's sake: it would be accepted and never read."""
    path = config_root() / group / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        return None
    return set(OmegaConf.load(path)) - {"_target_"}


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved here: skip the type check, not the build
        return {}


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a builder's annotation (int counts as float; bool as neither)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (bool, str):
        return isinstance(value, annotation)
    if origin in (tuple, list, Sequence) or annotation in (tuple, list):
        items = typing.get_args(annotation)
        return isinstance(value, (list, tuple)) and (not items or all(_fits(v, items[0]) for v in value))
    return True


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    if origin in (tuple, list, Sequence):
        return "a list"
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(annotation, str(annotation))


def group_choices(group: str) -> tuple[str, ...]:
    """A group's choices: the names of conf/<group>/*.yaml, so a builder that switches on `name`
    checks it against the files and no list repeats them. `none` (the off switch) leads, as in
    "valid: none, batchnorm, ..."; the rest follow in Hydra's (alphabetical) order."""
    names = sorted(path.stem for path in (config_root() / group).glob("*.yaml"))
    return tuple(sorted(names, key=lambda name: name != "none"))


def choices(cfg: DictConfig) -> dict[str, str]:
    """The chosen option of every group, e.g. {"init": "he", "norm": "layernorm", ...}."""
    return {group: str(cfg[group].name) for group in GROUPS}


def shipped_defaults(cfg: DictConfig) -> dict[str, Any]:
    """{dotted key: value} of the shipped config for `cfg`'s group choices with no value
    overridden: config.yaml's keys and each chosen group's YAML, interpolations unresolved, lists
    as single values.

    What a key added by an upgrade holds unless the user set it. A finished sweep job or a
    checkpoint recorded before the key existed matches a config that leaves it at this value (a
    new switch's default is the behaviour before it), so upgrading re-runs and refuses nothing."""
    root = config_root()
    shipped = OmegaConf.to_container(OmegaConf.load(root / "config.yaml"), resolve=False)
    tree: dict[str, Any] = {key: value for key, value in shipped.items() if key not in ("defaults", "hydra")}
    for group, node in cfg.items():
        name = node.get("name") if isinstance(node, DictConfig) else None
        path = root / str(group) / f"{name}.yaml"
        if isinstance(name, str) and path.is_file():
            merged = OmegaConf.merge(OmegaConf.create(tree.get(group) or {}), OmegaConf.load(path))
            tree[str(group)] = OmegaConf.to_container(merged, resolve=False)
    return flatten(tree)


def added_at_default(cfg: DictConfig, known: Collection[str], current: dict[str, Any],
                     encode: Callable[[Any], Any] = lambda value: value) -> set[str]:
    """The keys of `current` (`cfg` flattened, its values as `encode` writes them) that an older
    record, which knew only `known`, lacks and that hold their shipped default: keys an upgrade
    added, which change nothing until someone sets them (see shipped_defaults)."""
    defaults = shipped_defaults(cfg)
    return {key for key, value in current.items() if key not in known and key in defaults and encode(defaults[key]) == value}
