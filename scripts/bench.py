"""Benchmark: the same model, data and steps trained three ways in one invocation, interleaved
and repeated: a minimal hand-written PyTorch loop, `train` (trainer.run.run), and PyTorch
Lightning. Writes every figure as JSON and prints, per case:

- the median and the best (shortest) seconds of each way, and their ratios;
- the paired ratios: each repeat's ways run back to back, so their ratio cancels the machine's
  speed of that moment; their median, with a distribution-free 95% confidence interval;
- the same paired ratios of each run's median epoch (every epoch but the first and the cut-short
  last, each with its evaluation and, in `train_ckpt`, one checkpoint), which also leaves out a
  spike inside one run. On a shared machine whose speed drifts by tens of percent between runs,
  these are the figures that can tell a few percent apart.

    python scripts/bench.py                      # every case, on CUDA when present, else the CPU
    python scripts/bench.py --cases cnn1d --repeats 7 --out bench.json

Each way runs `steps` optimizer steps, evaluating the validation set at every epoch end and
after the last step, timed from the first step to the end of that last evaluation (process start, data generation and model
building are outside the timing, for all three). Checkpointing and logging are off in all
three, so the figures compare the training loops themselves; a fourth way, `train_ckpt`, is
`train` with its default checkpointing (every epoch end, at most one a second, best.pt), to show what
that costs (its timing includes waiting for the last checkpoint's write).

The `imagefolder` case streams an ImageFolder from disk (IMAGES generated JPEGs of IMAGE_SIDE px in
a temporary folder, data.in_memory=false, data.workers=WORKERS): `train` against a hand-written
DataLoader loop over the same dataset with the same workers, pinned memory and persistent workers
(`raw`); run it with `--cases imagefolder --ways raw train`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from trainer.cli import CONF_DIR
from trainer.data.streamed import StreamedSplits
from trainer.engine.parts import Parts, build_parts
from trainer.run import run


@dataclass(frozen=True)
class Case:
    name: str
    overrides: tuple[str, ...]
    batch_size: int
    steps: int  # per timed run
    ways: tuple[str, ...] = field(default=("raw", "train", "train_ckpt", "lightning"))


IMAGES, IMAGE_SIDE, WORKERS = 3000, 64, 2  # the imagefolder case: 2400 to train on, 600 to validate


def image_folder(root: Path) -> Path:
    """IMAGES JPEGs in two class folders under root: smooth random patterns (8 x 8 noise, upsampled)."""
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((IMAGE_SIDE, IMAGE_SIDE), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)
    return root


def cases(device: str, image_root: Path) -> list[Case]:
    cpu = device == "cpu"
    # Whole epochs in every case, so all three ways evaluate the same number of times.
    batch, steps = (32, 8) if cpu else (512, 64)
    images = ("data=synthetic", "data.image_size=32", "data.channels=3", "data.num_classes=10",
              f"data.num_train={batch * steps // (1 if cpu else 2)}", "data.num_val=512", "model=resnet18")
    return [
        Case("cnn1d", ("data=mnist1d", "model=cnn1d"), 100, 400),  # 10 epochs of 40 steps
        Case("mlp", ("data=mnist1d", "model=mlp"), 100, 400),
        Case("resnet18", images, batch, steps),  # CPU: one epoch of 8 steps; CUDA: two of 32
        # One epoch of 2400 streamed images in batches of 64 (a small CNN: the data path is what is compared).
        Case("imagefolder", ("data=imagefolder", f"data.path={image_root}", f"data.image_size={IMAGE_SIDE}",
                             "data.in_memory=false", f"data.workers={WORKERS}", "model=cnn", "model.channels=[16,32]"),
             64, 2400 // 64, ways=("raw", "train", "train_ckpt")),
    ]


def add_in_memory_case_arguments(parser: argparse.ArgumentParser) -> None:
    """--case (an in-memory case: cnn1d or mlp), --device and --precision, for the scripts that time
    parts of a run (bench_step.py, bench_epoch.py)."""
    parser.add_argument("--case", default="cnn1d", help="cnn1d or mlp (scripts/bench.py's in-memory cases)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto")


def in_memory_case(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Case:
    """The case --case names; a parser error for another."""
    known = {case.name: case for case in cases(args.device, Path("unused")) if case.name in ("cnn1d", "mlp")}
    if args.case not in known:
        parser.error(f"--case {args.case} is not one of {', '.join(known)}")
    return known[args.case]


def config(case: Case, device: str, precision: str, extra: tuple[str, ...] = ()):
    overrides = [*case.overrides, f"batch_size={case.batch_size}", f"max_steps={case.steps}", "epochs=1000",
                 f"device={device}", f"precision={precision}", "sched=constant", "checkpoint.every_epochs=0",
                 f"log_every={case.steps}", "curves=false", *extra]  # curves.png comes after the timing: not drawn
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---- the three ways -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """One timed run: its seconds, and the seconds at each epoch's end (after its evaluation)
    counted from the same start; none where a way does not report them (Lightning)."""

    seconds: float
    epoch_ends: tuple[float, ...] = ()


def raw_step(parts: Parts) -> Callable[[torch.Tensor], None]:
    """The raw loop's optimizer step on the training samples an index names: autocast to the run's
    dtype, fp16's loss scaling, AdamW (the parts' optimizer)."""
    model, optimizer, data, device = parts.model, parts.optimizer, parts.data, parts.device.type
    dtype = parts.precision.autocast_dtype
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss()

    def step(index: torch.Tensor) -> None:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model(data.x_train[index]), data.y_train[index])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def raw_evaluate(parts: Parts) -> float:
    """The raw loop's evaluation: validation accuracy in batches of 1024 under the run's autocast,
    read to the host as a loop that prints or logs it must; the model left in train mode."""
    model, data, device = parts.model, parts.data, parts.device.type
    dtype = parts.precision.autocast_dtype
    model.eval()
    with torch.no_grad(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        correct = sum((model(data.x_val[s : s + 1024]).argmax(1) == data.y_val[s : s + 1024]).sum()
                      for s in range(0, len(data.x_val), 1024))
    model.train()
    return float(correct) / len(data.x_val)


def raw_epochs(parts: Parts) -> Callable[[int], None]:
    """The raw loop's epoch, one per call of the returned function with the number of steps to take
    (an epoch's, or fewer at the end of a run): a fresh shuffle, the steps, then the evaluation."""
    step_on, batch, n = raw_step(parts), parts.cfg.batch_size, len(parts.data.x_train)
    generator = torch.Generator().manual_seed(0)

    def epoch(steps: int) -> None:
        order = torch.randperm(n, generator=generator).to(parts.device)
        for i in range(steps):
            step_on(order[i * batch : (i + 1) * batch])
        raw_evaluate(parts)  # at each epoch end, as `train` does

    return epoch


def raw_loop(cfg, steps: int) -> Timing:
    """What a careful user writes by hand: data on the device, index batching, AdamW, autocast
    (streamed data: `raw_loader_loop`)."""
    parts = build_parts(cfg)  # the same model, init and optimizer settings as `train`
    if isinstance(parts.data, StreamedSplits):
        return raw_loader_loop(cfg, parts, steps)
    epoch, per_epoch, device = raw_epochs(parts), parts.steps_per_epoch, parts.device.type
    synchronize(device)
    start = time.perf_counter()
    epoch_ends = []
    for first in range(0, steps, per_epoch):
        epoch(min(per_epoch, steps - first))
        epoch_ends.append(time.perf_counter() - start)
    synchronize(device)
    return Timing(time.perf_counter() - start, tuple(epoch_ends))


def raw_loader_loop(cfg, parts, steps: int) -> Timing:
    """The hand-written loop over images on disk: a shuffling DataLoader over the same dataset with the
    same workers, pinned memory and persistent workers; uint8 batches normalised on the device."""
    model, optimizer, data, device = parts.model, parts.optimizer, parts.data, parts.device
    mean, std = data.mean.to(device), data.std.to(device)
    pin, workers = device.type == "cuda", data.workers
    train = DataLoader(data.train.dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                       num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    val = DataLoader(data.val.dataset, batch_size=1024, num_workers=workers, pin_memory=pin,
                     persistent_workers=workers > 0)
    loss_fn = nn.CrossEntropyLoss()
    dtype = parts.precision.autocast_dtype
    autocast = lambda: torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)  # noqa: E731

    def ready(x: torch.Tensor) -> torch.Tensor:
        return (x.to(device, non_blocking=True).float().div_(255) - mean) / std

    synchronize(device.type)
    start = time.perf_counter()
    step, epoch_ends = 0, []
    while step < steps:
        model.train()
        for x, y in train:
            with autocast():
                loss = loss_fn(model(ready(x)), y.to(device, non_blocking=True))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == steps:
                break
        model.eval()  # evaluate at each epoch end (and the last step), as `train` does
        with torch.no_grad(), autocast():
            correct = sum((model(ready(x)).argmax(1) == y.to(device)).sum() for x, y in val)
        float(correct)
        epoch_ends.append(time.perf_counter() - start)
    synchronize(device.type)
    return Timing(time.perf_counter() - start, tuple(epoch_ends))


def trainer_way(cfg, steps: int) -> Timing:
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        summary = run(cfg, Path(folder) / "run")
        records = [json.loads(line) for line in (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == steps
    # An epoch line's `elapsed` is read right after the epoch's evaluation, as the raw loop's epoch ends.
    return Timing(summary["wall_s"], tuple(record["elapsed"] for record in records if record["kind"] == "epoch"))


def trainer_checkpointing_way(cfg, steps: int) -> Timing:
    """`train` as a user runs it: a checkpoint at every epoch end, at most one a second (the
    default checkpoint.min_interval_s), best.pt on improvement."""
    cfg = copy.deepcopy(cfg)
    cfg.checkpoint.every_epochs = 1
    return trainer_way(cfg, steps)


def lightning_way(cfg, steps: int) -> Timing:
    import lightning as L  # a benchmark extra: pip install -e .[bench]
    from torch.utils.data import DataLoader, TensorDataset

    parts = build_parts(cfg)
    data, dtype = parts.data, parts.precision.actual

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = parts.model
            self.loss_fn = nn.CrossEntropyLoss()

        def training_step(self, batch, index):  # type: ignore[no-untyped-def]
            x, y = batch
            return self.loss_fn(self.model(x), y)

        def validation_step(self, batch, index):  # type: ignore[no-untyped-def]
            x, y = batch
            self.log("val_acc", (self.model(x).argmax(1) == y).float().mean(), prog_bar=False)

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return parts.optimizer

    # Lightning's usual data path; tensors already on the device, so no worker or copy costs.
    train_loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=cfg.batch_size, shuffle=True,
                              drop_last=True)
    val_loader = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=1024)
    precision = {"bf16": "bf16-mixed", "fp16": "16-mixed"}.get(dtype, "32-true")
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator=parts.device.type, devices=1, precision=precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    synchronize(parts.device.type)
    start = time.perf_counter()
    trainer.fit(Module(), train_loader, val_loader)  # validates at each epoch end, as `train` does
    synchronize(parts.device.type)
    return Timing(time.perf_counter() - start)


WAYS: dict[str, Callable[..., Timing]] = {"raw": raw_loop, "train": trainer_way, "train_ckpt": trainer_checkpointing_way,
                             "lightning": lightning_way}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", help="cnn1d, mlp, resnet18, imagefolder (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--ways", nargs="*", default=list(WAYS))
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="bench-images-") as folder:
        images = Path(folder)
        chosen = [c for c in cases(args.device, images) if not args.cases or c.name in args.cases]
        if any(case.name == "imagefolder" for case in chosen):
            image_folder(images)
        results = measure(chosen, args)
    machine = {"device": args.device, "precision": args.precision, "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None, "python": sys.version.split()[0]}
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


def measure(chosen: list[Case], args: argparse.Namespace) -> dict:
    results = {}
    for case in chosen:
        cfg = config(case, args.device, args.precision)
        ways = [way for way in args.ways if way in case.ways]
        for way in ways:  # one untimed warm-up each: imports, allocator, kernel choice
            WAYS[way](cfg, case.steps)
        timings: dict[str, list[Timing]] = {way: [] for way in ways}
        for repeat in range(args.repeats):
            # Interleaved, so drift in the machine's speed hits all ways alike; the order reversed
            # every other repeat, so no way always runs right after another (or first).
            for way in ways if repeat % 2 == 0 else ways[::-1]:
                gc.collect()  # the previous way's garbage is not collected inside this way's timing
                timings[way].append(WAYS[way](cfg, case.steps))
        results[case.name] = summarise(case, timings)
        report(case.name, results[case.name], args.repeats)
    return results


def summarise(case: Case, timings: dict[str, list[Timing]]) -> dict:
    """Each way's whole-run seconds (median, best) and their ratios; the repeats' paired ratios; and
    the same for the median epoch of each run, where every way reports its epochs."""
    times = {way: [timing.seconds for timing in runs] for way, runs in timings.items()}
    medians = {way: statistics.median(t) for way, t in times.items()}
    bests = {way: min(t) for way, t in times.items()}
    samples = case.steps * case.batch_size
    epochs = {way: [statistics.median(durations) for timing in runs if (durations := full_epochs(timing))]
              for way, runs in timings.items()}
    epochs = {way: medians_of_runs for way, medians_of_runs in epochs.items() if len(medians_of_runs) == len(timings[way])}
    return {
        "steps": case.steps, "batch_size": case.batch_size, "times_s": times, "median_s": medians,
        "best_s": bests, "samples_per_s": {way: samples / m for way, m in medians.items()},
        **ratios(medians), "best": ratios(bests), "paired": paired_ratios(times),
        "epoch_median_s": epochs, "epoch_paired": paired_ratios(epochs),
    }


def full_epochs(timing: Timing) -> list[float]:
    """The seconds of each epoch but the first (which also pays for the run's start) and the last
    (which max_steps may cut short): one evaluation and, in `train_ckpt`, one checkpoint each."""
    ends = timing.epoch_ends
    return [b - a for a, b in zip(ends[:-1], ends[1:])][:-1]


def report(name: str, result: dict, repeats: int) -> None:
    print(f"{name:9s} median " + line(result["median_s"]), flush=True)
    print(f"{'':9s} best   " + line(result["best_s"]), flush=True)
    for label, key in (("paired", "paired"), ("epochs", "epoch_paired")):
        for ratio, paired in result[key].items():
            print(f"{'':9s} {label} {ratio.replace('_over_', '/')} {paired['median']:.3f} (95% interval of the "
                  f"median {paired['low']:.3f} to {paired['high']:.3f}, {repeats} repeats)", flush=True)


RATIOS = {"train_over_raw": ("train", "raw"), "train_ckpt_over_raw": ("train_ckpt", "raw"),
          "lightning_over_train": ("lightning", "train")}


def ratios(seconds: dict[str, float]) -> dict[str, float | None]:
    """Time ratios (above 1: the first way is slower) of the ways measured."""
    return {name: seconds[a] / seconds[b] if {a, b} <= set(seconds) else None for name, (a, b) in RATIOS.items()}


def line(seconds: dict[str, float]) -> str:
    """One way's seconds after another, then the ratios: `train/raw 1.012`."""
    shown = {name.replace("_over_", "/"): value for name, value in ratios(seconds).items() if value is not None}
    return "  ".join([*(f"{way} {s:.3f}s" for way, s in seconds.items()), *(f"{name} {v:.3f}" for name, v in shown.items())])


def paired_ratios(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each repeat's time ratio (its ways ran back to back, so they shared the machine's speed of
    the moment), summarised by the median and its distribution-free 95% confidence interval."""
    summary = {}
    for name, (a, b) in RATIOS.items():
        if {a, b} <= set(times):
            each = sorted(x / y for x, y in zip(times[a], times[b]))
            low, high = median_interval(each)
            summary[name] = {"median": statistics.median(each), "low": low, "high": high}
    return summary


def median_interval(ordered: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """The order statistics that bracket the median with at least `confidence`: the median of n
    draws lies below the k-th smallest with probability P(Binomial(n, 1/2) < k), whatever the
    distribution. Too few draws for that confidence: the whole range."""
    n = len(ordered)
    below = 0.0  # P(Binomial(n, 1/2) < k), for k rising from 1
    k = 0
    while k < n // 2:
        below += math.comb(n, k) / 2**n
        if below > (1 - confidence) / 2:
            break
        k += 1
    if k == 0:
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


if __name__ == "__main__":
    main()
