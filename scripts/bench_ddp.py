"""Benchmark: one process against N data-parallel processes (torchrun) on the same global batch.

Runs `train ... batch_size=B*N` and `torchrun --standalone --nproc_per_node=N -m trainer.cli ...
batch_size=B`, interleaved and repeated, each with one thread per process, and reads each run's
training time (`wall_s` of summary.json: the loop's own seconds, not Python's and torch's start).
Prints the medians, milliseconds per step and the overhead per step, and writes them as JSON.

    .venv/bin/python scripts/bench_ddp.py --repeats 3            # MLP on synthetic data, CPU, N=2
    .venv/bin/python scripts/bench_ddp.py --processes 4 --batch 16 -- model.width=1024   # a wider MLP, 4 processes
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The run both ways take, less its batch size: a small model on generated data, one epoch of
# 256 steps at the default global batch, nothing written but what the timing needs.
RUN = ["data=synthetic", "data.num_train=16384", "data.num_val=256", "data.num_test=0", "model=mlp", "norm=none",
       "device=cpu", "precision=fp32", "epochs=1", "checkpoint.every_epochs=0", "log_every=64", "curves=false",
       "trainer.threads=1"]


def timed(command: list[str], folder: Path) -> tuple[float, int]:
    """Run `command` writing into `folder`; the loop's seconds and its steps from summary.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, f"hydra.run.dir={folder}"], check=True, env=env, stdout=subprocess.DEVNULL)
    summary = json.loads((folder / "summary.json").read_text())
    return summary["wall_s"], summary["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="batch_size per process (one process: this x processes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench_ddp.json")
    parser.add_argument("overrides", nargs="*", help="more train overrides, after --")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    run = [*RUN, *args.overrides]
    ways = {
        "one": [sys.executable, "-m", "trainer.cli", *run, f"batch_size={args.batch * args.processes}"],
        "ddp": [str(bin_dir / "torchrun"), "--standalone", f"--nproc_per_node={args.processes}", "-m", "trainer.cli",
                *run, f"batch_size={args.batch}"],
    }
    times: dict[str, list[float]] = {way: [] for way in ways}
    steps = 0
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):  # interleaved, so drift in the machine's load hits both alike
            for way, command in ways.items():
                seconds, steps = timed(command, Path(scratch) / f"{way}{repeat}")
                times[way].append(seconds)
    medians = {way: statistics.median(values) for way, values in times.items()}
    per_step = {way: 1000 * median / steps for way, median in medians.items()}
    result = {"processes": args.processes, "batch_per_process": args.batch, "steps": steps, "overrides": run,
              "wall_s": times, "median_s": medians, "ms_per_step": per_step,
              "overhead_ms_per_step": per_step["ddp"] - per_step["one"], "load_average": os.getloadavg()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"one process, batch {args.batch * args.processes}: {medians['one']:.3f} s ({per_step['one']:.2f} ms/step); "
          f"{args.processes} processes, batch {args.batch} each: {medians['ddp']:.3f} s ({per_step['ddp']:.2f} ms/step); "
          f"overhead {result['overhead_ms_per_step']:+.2f} ms/step over {steps} steps")


if __name__ == "__main__":
    main()
