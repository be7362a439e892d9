"""Per-step cost of `train`'s training step against the raw loop's step, measured so that the
machine's drifting speed cancels: single steps alternate, raw then `Trainer.train_step` then raw
..., on two copies of the same model, optimizer and data (the order of the two swapped every
other pair). On a shared machine whose speed drifts by tens of percent between runs seconds
apart, whole-run timings (scripts/bench.py) cannot tell a few percent apart; a difference of
medians over thousands of neighbouring steps can.

A null pairing, raw against a second raw copy timed the same way, shows the method's own bias
(the second slot of a pair is a little faster, say); `overhead` is the train step's difference
minus the null one.

    python scripts/bench_step.py                       # cnn1d, 2000 pairs; writes bench_step.json
    python scripts/bench_step.py --case mlp --steps 5000

What a `train` step does beyond the raw one: it measures the global gradient norm every step (for
the logged grad_norm, its max, the divergence check and the diagnosis), goes through the
precision, clipping, loss and schedule strategies, and records the loss on the device. The
per-layer statistics (once an epoch), the evaluation and the checkpoints are not per-step costs
and are not measured here. On CUDA each step is synchronised, so this measures a step's latency,
not how much of the framework's host work overlaps the GPU's.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console

from bench import add_in_memory_case_arguments, config, in_memory_case, raw_step, synchronize
from trainer.engine.loop import Trainer
from trainer.engine.parts import Parts, build_parts
from trainer.observe.display import PlainDisplay

Step = Callable[[int], None]


def raw_steps(parts: Parts, order: torch.Tensor, batch: int, per_epoch: int) -> Step:
    """scripts/bench.py's raw loop step (autocast and loss scaling as the run's precision says), on `parts`."""
    step_on = raw_step(parts)

    def step(i: int) -> None:
        step_on(order[(i % per_epoch) * batch : (i % per_epoch + 1) * batch])

    return step


def trainer_steps(parts: Parts, order: torch.Tensor, batch: int, per_epoch: int) -> Step:
    """`Trainer.train_step` on `parts`, its device-side meter read once an epoch as the loop does."""
    trainer = Trainer(parts, PlainDisplay(Console(file=io.StringIO())), [], torch.Generator().manual_seed(0))

    def step(i: int) -> None:
        trainer.train_step(order[(i % per_epoch) * batch : (i % per_epoch + 1) * batch])
        if (i + 1) % per_epoch == 0:
            trainer.meter.read()

    return step


def alternate(first: Step, second: Step, steps: int, device: str, warmup: int = 50) -> tuple[list[float], list[float]]:
    """Seconds of each of `steps` steps of `first` and of `second`, run in alternation (which runs
    first in a pair swaps every pair), after `warmup` untimed pairs."""
    for i in range(warmup):
        first(i)
        second(i)
    synchronize(device)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(steps):
        for slot in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            (first, second)[slot](i)
            synchronize(device)
            times[slot].append(time.perf_counter() - start)
    return times


def compare(times: tuple[list[float], list[float]]) -> dict[str, float]:
    """Median seconds of each side, their difference and ratio."""
    a, b = statistics.median(times[0]), statistics.median(times[1])
    return {"first_s": a, "second_s": b, "difference_s": b - a, "ratio": b / a}


def measure(cfg, steps: int) -> dict[str, dict[str, float]]:
    """The train step against the raw one, and the null pairing (raw against raw), each over `steps` pairs."""
    copies = [build_parts(cfg) for _ in range(3)]  # the same seed: the same initial weights in each
    data, batch = copies[0].data, cfg.batch_size
    per_epoch = copies[0].steps_per_epoch
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0)).to(copies[0].device)
    device = copies[0].device.type
    train = compare(alternate(raw_steps(copies[0], order, batch, per_epoch),
                              trainer_steps(copies[1], order, batch, per_epoch), steps, device))
    null = compare(alternate(raw_steps(copies[0], order, batch, per_epoch),
                             raw_steps(copies[2], order, batch, per_epoch), steps, device))
    overhead = train["difference_s"] - null["difference_s"]
    return {"train_vs_raw": train, "raw_vs_raw": null,
            "overhead": {"seconds": overhead, "fraction_of_raw_step": overhead / train["first_s"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_in_memory_case_arguments(parser)
    parser.add_argument("--steps", type=int, default=2000, help="pairs of steps timed, for each comparison")
    parser.add_argument("--out", default="bench_step.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    case = in_memory_case(parser, args)
    result = measure(config(case, args.device, args.precision), args.steps)
    train, null, overhead = result["train_vs_raw"], result["raw_vs_raw"], result["overhead"]
    print(f"{args.case}: raw step {1e6 * train['first_s']:.1f} us, train step {1e6 * train['second_s']:.1f} us "
          f"(ratio {train['ratio']:.4f}); raw against raw: {1e6 * null['difference_s']:+.1f} us; "
          f"overhead {1e6 * overhead['seconds']:.1f} us a step = {100 * overhead['fraction_of_raw_step']:.1f}% "
          f"({args.steps} pairs each)")
    machine = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads()}
    Path(args.out).write_text(json.dumps({"case": args.case, "steps": args.steps, "machine": machine, **result}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
