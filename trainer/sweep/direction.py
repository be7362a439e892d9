"""Which way a search over runs goes (`hydra.sweeper.direction` of the optuna preset): the way the
metric each job returns improves (observe.metrics.OBJECTIVE), read from the config before any job
runs. The preset writes `direction: ${objective_direction:${data}}`; a `hydra.sweeper.direction=`
override still wins.
"""
from __future__ import annotations

from omegaconf import DictConfig

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


def objective_direction(data: DictConfig) -> str:
    """`maximize` for an accuracy, `minimize` for a loss or bits per character."""
    return "maximize" if higher_is_better(objective_metric(data)) else "minimize"


def _float_targets(path: object) -> bool:
    """Whether data=tensors' file holds float training targets (build's rule); a file that cannot
    be read counts as classification here: the first job refuses it with its own one-line error."""
    from trainer.data.tensors import is_regression  # torch loads here: only for data=tensors searches

    try:
        return is_regression(str(path))
    except Exception:  # noqa: BLE001 - any unreadable file; reported by the job that loads it
        return False
