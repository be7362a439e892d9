"""Which way a search over runs goes (`hydra.sweeper.direction` of the optuna preset): the way the
metric each job returns improves (observe.metrics.OBJECTIVE), read from the config before any job
runs. The preset writes `direction: ${objective_direction:}`; a `hydra.sweeper.direction=`
override still wins.
"""
from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from trainer.observe.metrics import higher_is_better

# Data choices whose runs have no accuracy or a better metric than it, by what each job returns:
# the character LM its bits per character, the regression tasks their loss. Every other choice is
# a classification judged by its validation accuracy (tests/test_sweep.py builds each to check).
OBJECTIVE_OF_DATA = {"text": "val_bpc", "adding": "val_loss"}


def objective_metric(data: DictConfig) -> str:
    """The metric a run on `data` returns to the sweeper: val_bpc, val_acc or val_loss."""
    name = str(data.get("name"))
    if name == "tensors":  # your own arrays: float targets are a regression
        return "val_loss" if _float_targets(data.get("path")) else "val_acc"
    return OBJECTIVE_OF_DATA.get(name, "val_acc")


def objective_direction(*, _root_: DictConfig) -> str:
    """`maximize` for an accuracy, `minimize` for a loss or bits per character: the resolver of
    `${objective_direction:}`, given the config the interpolation sits in (OmegaConf passes `_root_`)."""
    return "maximize" if higher_is_better(objective_metric(_run_data(_root_))) else "minimize"


def _run_data(root: DictConfig) -> DictConfig:
    """The run's `data` node. Not an interpolation of `${data}`: `train --cfg hydra --resolve` prints
    the hydra node alone, and Hydra deletes the job's keys from its copy before resolving (hydra's
    `get_sanitized_hydra_cfg`), so `${data}` failed there. The config Hydra composed is still
    the parent of the hydra node it keeps in HydraConfig (set for `${hydra:...}`): read it from there."""
    if "data" in root:
        return root.data
    composed = OmegaConf.select(HydraConfig.get(), "..data") if HydraConfig.initialized() else None
    if not isinstance(composed, DictConfig):
        raise ValueError("hydra.sweeper.direction=${objective_direction:} needs the run's config (its data); "
                         "set hydra.sweeper.direction=maximize or minimize")
    return composed


def _float_targets(path: object) -> bool:
    """Whether data=tensors' file holds float training targets (build's rule); a file that cannot
    be read counts as classification here: the first job refuses it with its own one-line error."""
    from trainer.data.tensors import is_regression  # torch loads here: only for data=tensors searches

    try:
        return is_regression(str(path))
    except Exception:  # noqa: BLE001 - any unreadable file; reported by the job that loads it
        return False
