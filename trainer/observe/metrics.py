"""Which way each metric improves, and which one a run is judged by, decided here once.

Early stopping, the best checkpoint, the sweep's objective and the report's ranking all read
these rules: accuracies and throughput are better higher; losses, seconds and epochs lower.
"""
from __future__ import annotations

from typing import Any

# Names that are better higher, also as the last part of a longer name (`best_val_acc`, `test_acc`).
HIGHER_IS_BETTER = ("acc", "samples_per_s")
# What a run is judged by, the first of these it has. The sweep's objective (what a job returns to
# the sweeper, e.g. Optuna's, searching in the direction trainer.sweep.direction gives): bits per
# character for a character LM (its accuracy is only the top guess's), validation accuracy when
# the task has one, else validation loss (every task has it).
OBJECTIVE = ("val_bpc", "val_acc", "val_loss")
# What the sweep report ranks by when not told: as the objective, with a sequence decoder's
# decoded whole-sequence accuracy (not the teacher-forced val_acc) before val_acc.
RANKING = ("val_bpc", "val_seq_acc", "val_acc", "val_loss")


def higher_is_better(metric: str) -> bool:
    """`val_acc`, `best_val_seq_acc`, `test_token_acc`, `samples_per_s`: True; `val_loss`, `val_bpc`, `wall_s`: False."""
    return any(metric == name or metric.endswith(f"_{name}") for name in HIGHER_IS_BETTER)


def lower_is_better_score(metric: str, value: float) -> float:
    """`value` as a score where lower is better, whichever way `metric` improves (an accuracy negated)."""
    return -value if higher_is_better(metric) else value


def improves(metric: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` (both in `metric`'s own units) by more than `min_delta`; any value beats None."""
    return best is None or lower_is_better_score(metric, best) - lower_is_better_score(metric, value) > min_delta


def objective(best: dict[str, Any]) -> float | None:
    """The number a sweep job returns, from its summary's `best` row: best val_bpc, else val_acc, else val_loss."""
    for metric in OBJECTIVE:
        if best.get(metric) is not None:
            return best[metric]
    return None
