"""Planted-fault benchmark of the diagnosis: does it find the fault, and does its first suggestion fix it?

Each fault is a `train` configuration broken on purpose (an LR 500x too high, labels shuffled,
inputs scaled by 1000, ...), with the findings that name that fault and a target metric. The
benchmark trains the broken run, reads its diagnosis, then pastes the first finding's first
`train ...` command (exactly as the panel prints it) and trains that. It reports:

- recall: the faults whose diagnosis names them;
- fix rate: the faults whose suggested command improved the target metric by a clear margin;
- false alarms: findings on healthy runs (which should get none); the faulty runs' other
  findings are listed too, as "also".

All runs are small (an MLP on the generated `synthetic` data, 10 classes, a few epochs: seconds
each on a CPU), in-process, in a temporary folder. Prints the table and writes it as JSON.

    flock /work/wt/suite.lock .venv/bin/python scripts/diagnose_bench.py   # ~5 min on 2 cores
    .venv/bin/python scripts/diagnose_bench.py --only labels inputs_scale   # some cases
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per run: the runs are tiny, and the machine shared

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from trainer.cli import CONF_DIR  # noqa: E402
from trainer.observe.diagnosis import apply_suggestion  # noqa: E402
from trainer.run import run  # noqa: E402

# Every run starts from this: 10-class generated signals (chance 10%), a 64-wide MLP, 5 epochs
# of 16 steps, a step line every 4 steps; no checkpoints (nothing to resume here).
BASE = ["data=synthetic", "data.num_classes=10", "model=mlp", "model.width=64", "device=cpu", "precision=fp32",
        "checkpoint.every_epochs=0", "log_every=4", "batch_size=32", "epochs=5"]
# A suggestion "fixes" the fault when the target metric improves by more than this: 5 points of
# accuracy on 256 validation samples is beyond seed-to-seed noise here (about +-2 points).
ACC_MARGIN = 0.05
# ... or, for a loss, when it falls by more than 10%.
LOSS_MARGIN = 0.10


@dataclass(frozen=True)
class Case:
    """Args:
        name: short id.
        fault: what is planted, in words.
        overrides: applied over BASE (a key replaces BASE's; a new group choice drops its old settings).
        expect: finding kinds that name the fault (any of them counts as found).
        metric: best_val_acc (higher is better) or final_val_loss (lower is better).
    """

    name: str
    fault: str
    overrides: tuple[str, ...]
    expect: tuple[str, ...] = ()
    metric: str = "best_val_acc"


FAULTS = [
    Case("lr_high_sgd", "SGD at LR 50 (500x its usual 0.1), no normalisation", ("optim=sgd", "optim.lr=50", "norm=none"),
         ("divergence", "lr_too_high", "oscillation")),
    Case("lr_high_adam", "Adam at LR 1 (1000x its usual 1e-3), no normalisation", ("optim=adam", "optim.lr=1", "norm=none"),
         ("divergence", "lr_too_high", "oscillation")),
    Case("lr_low", "SGD at LR 1e-5 (10^4x too low)", ("optim=sgd", "optim.lr=1e-5"), ("stall",)),
    Case("labels_shuffled", "every training label replaced by a random class", ("data.label_noise=1",), ("labels",)),
    Case("too_few_epochs", "3 epochs of SGD at LR 0.01: stopped while the loss still falls",
         ("optim=sgd", "optim.lr=0.01", "epochs=3"), ("underfitting",)),
    Case("overfit_small_set", "32 training samples (one batch), a 512-wide MLP, 30 epochs",
         ("data.num_train=32", "model.width=512", "epochs=30"), ("overfitting",)),
    Case("vanishing_deep", "a 20-layer plain MLP without normalisation", ("model.depth=20", "norm=none"),
         ("vanishing_gradients",)),
    Case("init_naive_normal", "N(0, 1) init of every weight (no fan-in scaling), 4 layers, no normalisation",
         ("init=normal", "init.std=1.0", "norm=none", "model.depth=4"), ("init",)),
    Case("dead_relu", "Adam at LR 0.3 on a 4-layer ReLU MLP without normalisation",
         ("optim=adam", "optim.lr=0.3", "norm=none", "model.depth=4"), ("dead_units",)),
    Case("inputs_scale", "every input multiplied by 1000, no normalisation", ("data.input_scale=1000", "norm=none"),
         ("inputs",)),
    Case("inputs_offset", "100 added to every input, no normalisation", ("data.input_offset=100", "norm=none"),
         ("inputs",)),
    Case("warmup_missing", "Adam at LR 0.3 from the first step (constant schedule), no normalisation, 20 epochs",
         ("optim=adam", "optim.lr=0.3", "sched=constant", "norm=none", "epochs=20"), ("warmup",)),
    Case("clipping_every_step", "gradients clipped to norm 0.001 (the usual norm is ~2)",
         ("optim=sgd", "clipping=norm", "clipping.max_norm=0.001"), ("clipping",)),
    Case("batchnorm_tiny_batch", "batch norm on batches of 2", ("batch_size=2", "epochs=2"), ("batchnorm_batch",)),
    Case("too_small", "a 1-unit hidden layer", ("model.width=1", "model.depth=1"), ("too_small",)),
]

HEALTHY = [
    Case("default_mlp", "the base: AdamW 0.01, warmup + cosine, batch norm", ()),
    Case("sgd", "plain SGD at 0.1", ("optim=sgd", "optim.lr=0.1")),
    Case("momentum", "SGD with momentum", ("optim=momentum",)),
    Case("adam_layernorm", "Adam 1e-3, layer norm", ("optim=adam", "norm=layernorm")),
    Case("no_norm_he", "no normalisation, He init", ("norm=none", "init=he")),
    Case("cnn1d", "the 1-D CNN", ("model=cnn1d",)),
    Case("dropout_cosine", "dropout, cosine schedule", ("regularisation=dropout", "sched=cosine")),
    Case("deep_residual", "a residual net, 2 blocks per stage", ("model=resnet", "model.depth=2")),
    Case("four_classes", "4 classes, 10 epochs", ("data.num_classes=4", "epochs=10")),
    Case("tanh_xavier", "tanh with Xavier init", ("model.activation=tanh", "init=xavier")),
]


def overrides_of(case: Case) -> list[str]:
    return apply_suggestion(BASE, " ".join(shlex.quote(o) for o in case.overrides))


def train(overrides: list[str], folder: Path) -> dict[str, Any]:
    """Run `train OVERRIDES` in this process (as the CLI would) and return its summary."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with contextlib.redirect_stdout(io.StringIO()):  # the live view; the summary has everything
        return run(cfg, folder, overrides)


def metric(summary: dict[str, Any], name: str) -> float | None:
    """The target metric; a diverged run with no finite figure counts as chance (accuracy 0.1)."""
    value = summary["best"].get("val_acc") if name == "best_val_acc" else summary["final"].get("val_loss")
    if value is None and name == "best_val_acc":
        return 0.1
    return value


def improved(before: float | None, after: float | None, name: str) -> bool:
    if after is None:
        return False
    if before is None:
        return True
    return after > before + ACC_MARGIN if name == "best_val_acc" else after < (1 - LOSS_MARGIN) * before


def fault_row(case: Case, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    overrides = overrides_of(case)
    broken = train(overrides, folder / case.name)
    findings = broken["diagnosis"]
    kinds = [f["kind"] for f in findings]
    row: dict[str, Any] = {
        "case": case.name, "fault": case.fault, "command": "train " + " ".join(case.overrides), "expect": list(case.expect),
        "findings": kinds, "found": any(kind in case.expect for kind in kinds),
        "also": [kind for kind in kinds if kind not in case.expect], "metric": case.metric,
        "broken": metric(broken, case.metric), "broken_status": broken["status"],
    }
    if findings and findings[0]["commands"]:
        first = findings[0]
        pasted = shlex.split(first["commands"][0])[1:]  # the printed `train ...`, as a shell would split it
        fixed = train(pasted, folder / f"{case.name}-fixed")
        row.update(suggestion=first["suggestions"][0], suggested_by=first["kind"],
                   evidence=first["evidence"], fixed=metric(fixed, case.metric), fixed_status=fixed["status"])
        row["fix_improves"] = improved(row["broken"], row["fixed"], case.metric)
    else:
        row.update(suggestion=None, fixed=None, fix_improves=False)
    row["wall_s"] = round(time.perf_counter() - started, 1)
    return row


def healthy_row(case: Case, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    summary = train(overrides_of(case), folder / case.name)
    kinds = [f["kind"] for f in summary["diagnosis"]]
    return {"case": case.name, "config": case.fault, "command": "train " + " ".join(case.overrides),
            "status": summary["status"], "best_val_acc": summary["best"].get("val_acc"), "findings": kinds,
            "false_alarms": len(kinds), "wall_s": round(time.perf_counter() - started, 1)}


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """The README's tables."""
    lines = ["| planted fault | findings | found | first suggestion | target | broken | fixed | improved |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["faults"]:
        shown = ", ".join(row["findings"]) or "none"
        lines.append(f"| {row['fault']} (`{row['command']}`) | {shown} | {'yes' if row['found'] else 'NO'} | `{row['suggestion']}` | "
                     f"{row['metric']} | {_number(row['broken'])} | {_number(row['fixed'])} | "
                     f"{'yes' if row['fix_improves'] else 'NO'} |")
    lines += ["", "| healthy run | best_val_acc | findings |", "| --- | --- | --- |"]
    for row in result["healthy"]:
        lines.append(f"| {row['config']} (`{row['command'].strip()}`) | {_number(row['best_val_acc'])} | "
                     f"{', '.join(row['findings']) or 'none'} |")
    totals = result["totals"]
    lines += ["", f"Recall {totals['found']}/{totals['faults']}, fix rate {totals['fixed']}/{totals['faults']}, "
              f"false alarms on healthy runs {totals['false_alarms']} (over {totals['healthy']} runs)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/bench/diagnose.json"), help="where the JSON goes")
    parser.add_argument("--only", nargs="*", default=None, help="run only these cases (names)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    chosen = set(args.only or [])
    faults = [case for case in FAULTS if not chosen or case.name in chosen]
    healthy = [case for case in HEALTHY if not chosen or case.name in chosen]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fault_rows = []
        for case in faults:
            fault_rows.append(fault_row(case, Path(tmp)))
            row = fault_rows[-1]
            print(f"{case.name:<22} found={row['found']!s:<5} findings={','.join(row['findings']) or '-':<40} "
                  f"try={row['suggestion']}  {_number(row['broken'])} -> {_number(row['fixed'])} "
                  f"improved={row['fix_improves']}  ({row['wall_s']} s)", flush=True)
        healthy_rows = []
        for case in healthy:
            healthy_rows.append(healthy_row(case, Path(tmp)))
            row = healthy_rows[-1]
            print(f"{case.name:<22} healthy acc={_number(row['best_val_acc'])} findings={','.join(row['findings']) or '-'} "
                  f"({row['wall_s']} s)", flush=True)
    result = {
        "totals": {"faults": len(fault_rows), "found": sum(r["found"] for r in fault_rows),
                   "fixed": sum(r["fix_improves"] for r in fault_rows), "healthy": len(healthy_rows),
                   "false_alarms": sum(r["false_alarms"] for r in healthy_rows)},
        "base": BASE, "acc_margin": ACC_MARGIN, "loss_margin": LOSS_MARGIN,
        "faults": fault_rows, "healthy": healthy_rows,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print()
    print(markdown(result))
    print(f"\n{result['wall_s']} s in all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
