"""scripts/bench.py's statistics: the paired ratios' confidence interval and the epochs it compares."""
from __future__ import annotations

import argparse
from types import ModuleType

import pytest

from helpers import load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench")


@pytest.mark.parametrize(("n", "low", "high"), [(5, 1, 5), (6, 1, 6), (9, 2, 8), (15, 4, 12), (20, 6, 15), (40, 14, 27)])
def test_median_interval_is_the_binomial_order_statistics(bench: ModuleType, n: int, low: int, high: int) -> None:
    # The 1-based ranks of the usual tables of the median's distribution-free 95% interval.
    assert bench.median_interval([float(rank) for rank in range(1, n + 1)]) == (low, high)


def test_full_epochs_leave_out_the_first_and_the_last(bench: ModuleType) -> None:
    timing = bench.Timing(0.5, (0.1, 0.2, 0.35, 0.45, 0.5))
    assert bench.full_epochs(timing) == pytest.approx([0.1, 0.15, 0.1])
    assert bench.full_epochs(bench.Timing(0.1, (0.1,))) == []


def test_measure_reports_paired_and_epoch_ratios(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    # 2 full epochs of 4 steps and 2 more: epoch ends 3 times, one full epoch compared per run.
    case = bench.Case("tiny", ("data=synthetic", "data.num_train=128", "data.num_val=32", "data.num_test=0",
                               "model=mlp", "model.width=8", "curves=false"), 32, 10, ways=("raw", "train", "train_ckpt"))
    args = argparse.Namespace(device="cpu", precision="auto", ways=["raw", "train", "train_ckpt"], repeats=2)
    result = bench.measure([case], args)["tiny"]
    assert set(result["times_s"]) == {"raw", "train", "train_ckpt"}
    assert all(len(times) == 2 for times in result["times_s"].values())
    assert set(result["epoch_median_s"]) == {"raw", "train", "train_ckpt"}
    assert all(len(seconds) == 2 and min(seconds) > 0 for seconds in result["epoch_median_s"].values())
    for ratios in (result["paired"], result["epoch_paired"]):
        assert set(ratios) == {"train_over_raw", "train_ckpt_over_raw"}
        assert all(r["low"] <= r["median"] <= r["high"] for r in ratios.values())
    printed = capsys.readouterr().out
    assert "paired train/raw" in printed and "epochs train_ckpt/raw" in printed


@pytest.fixture(scope="module")
def bench_step(bench: ModuleType) -> ModuleType:
    return load_script("bench_step")  # imports `bench`, which the fixture above registered


def test_bench_step_times_alternating_steps_and_the_null_pairing(bench: ModuleType, bench_step: ModuleType) -> None:
    case = bench.Case("tiny", ("data=synthetic", "data.num_train=128", "model=mlp", "model.width=8"), 32, 10)
    result = bench_step.measure(bench.config(case, "cpu", "auto"), steps=20)
    for pairing in ("train_vs_raw", "raw_vs_raw"):
        figures = result[pairing]
        assert figures["first_s"] > 0 and figures["second_s"] > 0
        assert figures["difference_s"] == pytest.approx(figures["second_s"] - figures["first_s"])
    expected = result["train_vs_raw"]["difference_s"] - result["raw_vs_raw"]["difference_s"]
    assert result["overhead"]["seconds"] == pytest.approx(expected)


def test_alternate_swaps_which_runs_first(bench_step: ModuleType) -> None:
    calls: list[str] = []
    bench_step.alternate(lambda i: calls.append("a"), lambda i: calls.append("b"), steps=3, device="cpu", warmup=0)
    assert calls == ["a", "b", "b", "a", "a", "b"]


def test_bench_epoch_pairs_each_train_epoch_with_the_raw_epoch_after_it(bench: ModuleType) -> None:
    import trainer.run

    bench_epoch = load_script("bench_epoch")
    probe = trainer.run.layers_probe
    case = bench.Case("tiny", ("data=synthetic", "data.num_train=128", "data.num_val=32", "data.num_test=0",
                               "model=mlp", "model.width=8"), 32, 10)
    for every in (0, 1):
        cfg = bench.config(case, "cpu", "auto", (f"checkpoint.every_epochs={every}",))
        train_s, raw_s = bench_epoch.alternate(bench_epoch.measure_config(cfg, 3), 3)
        assert len(train_s) == len(raw_s) == 3 and min(train_s + raw_s) > 0
        result = bench_epoch.paired(train_s, raw_s)
        assert result["pairs"] == 3 and result["low"] <= result["median"] <= result["high"]
        assert result["total_low"] <= result["total"] <= result["total_high"]
        assert result["total"] == pytest.approx(sum(train_s) / sum(raw_s))
    assert trainer.run.layers_probe is probe  # the run's own probe is put back


def test_bench_epoch_across_runs_takes_the_median_of_the_runs_figures() -> None:
    bench_epoch = load_script("bench_epoch")
    runs = [{"median": m, "total": t, "pairs": 10, "train_epoch_s": 0.1, "raw_epoch_s": 0.09}
            for m, t in ((1.05, 1.06), (1.02, 1.01), (1.03, 1.04), (1.04, 1.02), (1.01, 1.03))]
    result = bench_epoch.across_runs(runs)
    assert (result["median"], result["total"], result["pairs"]) == (1.03, 1.03, 50)
    assert (result["low"], result["high"]) == (1.01, 1.05)  # 5 runs: their whole range
    assert (result["total_low"], result["total_high"]) == (1.01, 1.06)
