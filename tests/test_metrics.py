"""observe/metrics.py: the one place that says which way a metric improves and what a run is
judged by; early stopping, best.pt, the sweep's objective and the report all follow it."""
from __future__ import annotations

import pytest

from trainer.observe.metrics import higher_is_better, improves, lower_is_better_score, objective
from trainer.sweep.report import METRICS


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_every_report_column_has_the_direction_its_name_says(metric: str) -> None:
    """Accuracies and throughput up; losses, bits per character, seconds and epochs down."""
    assert higher_is_better(metric) is (metric.endswith("_acc") or metric == "samples_per_s")


def test_a_change_improves_only_beyond_min_delta_in_the_metrics_direction() -> None:
    assert improves("val_loss", 0.9, 1.0) and not improves("val_loss", 1.1, 1.0)
    assert improves("val_acc", 0.8, 0.7) and not improves("val_acc", 0.6, 0.7)
    assert not improves("val_loss", 0.95, 1.0, min_delta=0.1) and improves("val_loss", 0.85, 1.0, min_delta=0.1)
    assert not improves("val_acc", 0.75, 0.7, min_delta=0.1) and improves("val_acc", 0.85, 0.7, min_delta=0.1)
    assert improves("val_bpc", 5.0, None)  # the first evaluation is the best so far
    # best.pt's score, kept in checkpoints as lower-is-better (an accuracy negated, as before the move).
    assert lower_is_better_score("val_acc", 0.9) == -0.9 and lower_is_better_score("val_loss", 0.9) == 0.9


def test_the_objective_is_bits_per_character_else_validation_accuracy_else_loss() -> None:
    assert objective({"val_acc": 0.9, "val_loss": 0.3}) == 0.9
    assert objective({"val_acc": 0.4, "val_loss": 2.1, "val_bpc": 3.0}) == 3.0  # a character LM: minimized
    assert objective({"val_acc": None, "val_loss": 0.3}) == 0.3  # regression: no accuracy
    assert objective({}) is None  # a run with no finite evaluation
