"""Per-epoch cost of a whole `train` run against the raw loop's, measured so that the machine's
drifting speed cancels: inside one `train` run (trainer.run.run, with everything a user's run
does: per-step gradient norms, the per-layer statistics, metrics.jsonl, the console display and,
with --checkpointing on, train's default checkpointing: every epoch end, at most one a second,
and best.pt), a raw epoch runs between each
two of its epochs, on a copy of the same model, optimizer and data (scripts/bench.py's raw loop:
the same steps, then the same evaluation). Each train epoch is paired with the raw epoch right
after it, some 0.1 s apart on cnn1d; whole runs (scripts/bench.py) are seconds apart, and on a
shared machine whose speed drifts by tens of percent between runs they cannot tell a few percent
apart.

A train epoch is timed from the end of the raw epoch before it to the start of the raw epoch after
it: its steps, its evaluation, its layer statistics and records, and the previous epoch's
checkpoint save (the save comes after the probes at an epoch end). A checkpoint's background write
overlaps the train epoch it was saved in front of, as in a real run; its wait, if any, is the
train epoch's too. The floor of one checkpoint a second (checkpoint.min_interval_s) reads the run's
own seconds, the raw epochs' left out, so the run checkpoints as often as it would alone.

    python scripts/bench_epoch.py                           # cnn1d, 200 epoch pairs, checkpointing off and on
    python scripts/bench_epoch.py --epochs 400 --checkpointing on
    python scripts/bench_epoch.py --epochs 100 --runs 7     # the median of 7 runs for each setting

Prints and writes (bench_epoch.json) the median paired time ratio train/raw with its
distribution-free 95% interval, and the ratio of the totals (every train epoch's time over every
raw epoch's: what a whole run's samples/s sees, the epochs that checkpoint included) with a
bootstrap 95% interval; 1.03 is 0.97x the raw loop's samples/s.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

import trainer.run
from bench import add_in_memory_case_arguments, config, in_memory_case, median_interval, raw_epochs, synchronize
from trainer.engine.parts import build_parts


def raw_epochs_beside(cfg) -> Callable[[], None]:
    """One whole epoch of scripts/bench.py's raw loop per call, on parts of its own."""
    parts = build_parts(cfg)  # the same seed as the run's parts: the same initial weights
    epoch, steps = raw_epochs(parts), parts.steps_per_epoch

    def whole_epoch() -> None:
        epoch(steps)
        synchronize(parts.device.type)

    return whole_epoch


def alternate(cfg, epochs: int) -> tuple[list[float], list[float]]:
    """Seconds of `epochs` train epochs and of the raw epoch that follows each, in a run of `cfg`
    (measure_config: `epochs` + 1 epochs), the first pair left out (it pays for the run's start)."""
    raw_epoch = raw_epochs_beside(cfg)
    train_s: list[float] = []
    raw_s: list[float] = []
    raw_ended: list[float] = []
    layers_probe, checkpointer = trainer.run.layers_probe, trainer.run.checkpoint.Checkpointer

    def probe_then_raw_epoch(trainer_: Any) -> dict[str, Any]:
        record = layers_probe(trainer_)  # the run's own probe, inside the train epoch's time
        synchronize(cfg.device)
        started = time.perf_counter()
        if raw_ended:
            train_s.append(started - raw_ended[-1])
        raw_epoch()
        raw_ended.append(time.perf_counter())
        raw_s.append(raw_ended[-1] - started)
        return record

    def run_clock() -> float:
        """The run's own seconds, the raw epochs' left out: checkpoint.min_interval_s floors the
        checkpoints by this clock, so the run checkpoints as often as it would alone, not twice
        as often (its wall clock runs a raw epoch for each of its own)."""
        return time.monotonic() - sum(raw_s)

    # The run's probes are [layers_probe] (trainer.run._train): the raw epoch runs in its place,
    # at each epoch end, after the run's evaluation and records and before its checkpoint.
    trainer.run.layers_probe = probe_then_raw_epoch
    trainer.run.checkpoint.Checkpointer = functools.partial(checkpointer, clock=run_clock)
    try:
        with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
            summary = trainer.run.run(cfg, Path(folder) / "run")
    finally:
        trainer.run.layers_probe, trainer.run.checkpoint.Checkpointer = layers_probe, checkpointer
    assert summary["status"] == "completed", summary["status"]
    # Probe calls: one before the first step (epoch 0's record) and one per epoch. Pair each train
    # epoch with the raw epoch after it; the first epoch (pair) pays for the run's start.
    train_s, raw_s = train_s[1:], raw_s[2:]
    assert len(train_s) == len(raw_s) == epochs, (len(train_s), len(raw_s), epochs)
    return train_s, raw_s


def paired(train_s: list[float], raw_s: list[float]) -> dict[str, float]:
    """The median of the pairs' time ratios train/raw, with its 95% interval, and each side's median;
    and the ratio of the totals (all train epochs' time over all raw epochs'), with a bootstrap 95%
    interval. The median stands for a typical epoch; the totals count the epochs that do more
    than most (a checkpoint once a second, best.pt), as a whole run's samples/s does."""
    each = sorted(t / r for t, r in zip(train_s, raw_s))
    low, high = median_interval(each)
    total_low, total_high = bootstrap_interval(train_s, raw_s)
    return {"median": statistics.median(each), "low": low, "high": high, "pairs": len(each),
            "total": sum(train_s) / sum(raw_s), "total_low": total_low, "total_high": total_high,
            "train_epoch_s": statistics.median(train_s), "raw_epoch_s": statistics.median(raw_s)}


def bootstrap_interval(train_s: list[float], raw_s: list[float], draws: int = 2000,
                       confidence: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of sum(train) / sum(raw), the pairs resampled together
    (seeded: the same times give the same interval)."""
    draw = random.Random(0)
    pairs = list(zip(train_s, raw_s))
    ratios = []
    for _ in range(draws):
        sample = draw.choices(pairs, k=len(pairs))
        ratios.append(sum(t for t, _ in sample) / sum(r for _, r in sample))
    ratios.sort()
    tail = int(draws * (1 - confidence) / 2)
    return ratios[tail], ratios[draws - 1 - tail]


def measure_config(cfg, epochs: int):
    """`cfg` for a run of `epochs` + 1 epochs (the first pair is left out), its max_steps unset."""
    cfg = cfg.copy()
    cfg.epochs, cfg.max_steps = epochs + 1, None
    return cfg


def measure(cfg, epochs: int) -> dict[str, float]:
    """`epochs` pairs of a train epoch and a raw one."""
    return paired(*alternate(measure_config(cfg, epochs), epochs))


def across_runs(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Several runs' results together. Each run's model and data copies land at other addresses,
    and the pairs of one run share a bias of their own (run-to-run medians of the same code moved
    by +-2 points on this project's machine, each run's own interval by +-1): the median of the
    runs' medians, and of their totals, with the distribution-free interval of a median over the
    runs (with 5 runs, their whole range: 94%)."""
    medians, totals = sorted(run["median"] for run in runs), sorted(run["total"] for run in runs)
    low, high = median_interval(medians)
    total_low, total_high = median_interval(totals)
    return {"median": statistics.median(medians), "low": low, "high": high,
            "total": statistics.median(totals), "total_low": total_low, "total_high": total_high,
            "pairs": sum(run["pairs"] for run in runs), "train_epoch_s": statistics.median(run["train_epoch_s"] for run in runs),
            "raw_epoch_s": statistics.median(run["raw_epoch_s"] for run in runs), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_in_memory_case_arguments(parser)
    parser.add_argument("--epochs", type=int, default=200, help="pairs of epochs timed, for each setting")
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="both",
                        help="on: train's default checkpointing (every epoch end, at most one a second, best.pt)")
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of --epochs pairs for each setting, the settings in turn; more than 1 reports "
                             "the median of the runs' figures (each run's pairs share a bias of their own)")
    parser.add_argument("--out", default="bench_epoch.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    case = in_memory_case(parser, args)
    settings = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.checkpointing]
    configs = {setting: config(case, args.device, args.precision,
                               (f"checkpoint.every_epochs={'1' if setting == 'on' else '0'}",)) for setting in settings}
    runs: dict[str, list[dict[str, float]]] = {setting: [] for setting in settings}
    for number in range(args.runs):  # the settings in turn, so that the machine's drift falls on each alike
        for setting in settings:
            result = measure(configs[setting], args.epochs)
            runs[setting].append(result)
            if args.runs > 1:
                print(f"  run {number + 1}, checkpointing {setting}: paired train/raw {result['median']:.4f}, "
                      f"all epochs together {result['total']:.4f}", flush=True)
    results = {}
    for setting in settings:
        result = results[f"checkpointing_{setting}"] = runs[setting][0] if args.runs == 1 else across_runs(runs[setting])
        over = f"{result['pairs']} pairs" if args.runs == 1 else f"median of {args.runs} runs of {args.epochs} pairs"
        print(f"{args.case}, checkpointing {setting}: train epoch {result['train_epoch_s'] * 1e3:.1f} ms, raw "
              f"{result['raw_epoch_s'] * 1e3:.1f} ms; paired train/raw {result['median']:.4f} (95% interval "
              f"{result['low']:.4f} to {result['high']:.4f}, {over}) = "
              f"{1 / result['median']:.3f}x the raw loop's samples/s; all epochs together {result['total']:.4f} "
              f"({result['total_low']:.4f} to {result['total_high']:.4f}) = {1 / result['total']:.3f}x", flush=True)
    machine = {"device": args.device, "precision": args.precision, "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    Path(args.out).write_text(json.dumps({"case": args.case, "epochs": args.epochs, "runs": args.runs, "machine": machine, **results},
                                         indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
