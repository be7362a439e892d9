"""The sweep report: which configuration of a multirun did best, by how much, and whether the
difference exceeds the seed-to-seed spread.

Reads every job folder under a sweep folder (.hydra/overrides.yaml, summary.json,
metrics.jsonl), groups the jobs by the overrides that vary across the sweep except `seed`, and
writes report.md, report.csv and report.png (validation curves, mean over seeds with a min-max
band) into the sweep folder. The `train -m` callback (trainer.sweep.jobs.ReportCallback) and the
`train-report PATH` command both end here, so a sweep still running, interrupted, or holding
failed jobs is reported the same way.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import ConfigError
from trainer.observe.history import read_json, read_metrics
from trainer.observe.metrics import RANKING, higher_is_better
from trainer.observe.records import write_atomic

# name -> where it sits in summary.json.
METRICS: dict[str, tuple[str, ...]] = {
    "best_val_acc": ("best", "val_acc"),
    "best_val_loss": ("best", "val_loss"),
    "best_train_loss": ("best", "train_loss"),
    "final_val_acc": ("final", "val_acc"),
    "final_val_loss": ("final", "val_loss"),
    "final_train_loss": ("final", "train_loss"),
    "test_acc": ("test", "acc"),
    "test_loss": ("test", "loss"),
    # Sequence decoders (model=seq2seq): the decoded outputs' accuracy, per token and per whole sequence.
    "best_val_seq_acc": ("best", "val_seq_acc"),
    "best_val_token_acc": ("best", "val_token_acc"),
    "final_val_seq_acc": ("final", "val_seq_acc"),
    "final_val_token_acc": ("final", "val_token_acc"),
    "test_seq_acc": ("test", "seq_acc"),
    "test_token_acc": ("test", "token_acc"),
    "best_val_bpc": ("best", "val_bpc"),  # bits per character: character LMs (data=text) only
    "final_val_bpc": ("final", "val_bpc"),
    "test_bpc": ("test", "bpc"),
    "epochs_to_best": ("best", "epoch"),
    "wall_s": ("wall_s",),
    "samples_per_s": ("samples_per_s",),
}
DECODED = ("best_val_seq_acc", "best_val_token_acc", "final_val_seq_acc", "final_val_token_acc", "test_seq_acc",
           "test_token_acc")
OK = ("completed", "early_stopped")
SEED = "seed"
NOT_JOBS = {"previous", ".hydra", ".submitit", ".failed"}  # set-aside attempts and tool folders hold no jobs
NOISE_RULE = ("a configuration differs from the best only when |mean difference| > the larger of the "
              "two standard deviations over seeds; `within noise` marks rows where it does not, "
              "`? (1 seed)` rows where a standard deviation cannot be estimated")
FORMATS = {"epochs_to_best": "{:.1f}", "wall_s": "{:.1f}", "samples_per_s": "{:.0f}"}


@dataclass
class Job:
    folder: Path
    overrides: dict[str, str]
    status: str  # a summary's status, else crashed | incomplete | config error
    summary: dict[str, Any] | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl's epoch lines
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in OK

    def value(self, metric: str) -> float | None:
        node: Any = self.summary
        for key in METRICS[metric]:
            node = node.get(key) if isinstance(node, dict) else None
        return float(node) if isinstance(node, (int, float)) and math.isfinite(node) else None


@dataclass
class Row:
    """One configuration: its jobs over seeds and the mean and std of each metric over the ok ones."""

    label: str
    overrides: dict[str, str]
    jobs: list[Job]
    stats: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    verdict: str = ""

    @property
    def ok(self) -> list[Job]:
        return [job for job in self.jobs if job.ok]

    @property
    def failed(self) -> list[Job]:
        return [job for job in self.jobs if not job.ok]


@dataclass
class Report:
    sweep_dir: Path
    metric: str
    rows: list[Row]
    jobs: list[Job]
    varying: list[str]


# --- reading a sweep ----------------------------------------------------------------------

def check_metric(metric: str | None, option: str = "--metric") -> None:
    if metric is not None and metric not in METRICS:
        raise ConfigError(f"{option}={metric} is unknown; valid: {', '.join(METRICS)}")


def _parse_overrides(items: list[Any]) -> dict[str, str]:
    """["norm=none", "+foo=1"] -> {"norm": "none", "foo": "1"}."""
    parsed = {}
    for item in items:
        key, _, value = str(item).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def _read_curve(path: Path) -> list[dict[str, Any]]:
    return read_metrics(path)["epoch"] if path.exists() else []


def read_job(folder: Path) -> Job:
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    summary = read_json(folder / "summary.json")
    error = folder / "error.txt"
    if summary is not None:
        status, message = str(summary.get("status")), str(summary.get("message") or "")
    elif error.exists():
        lines = error.read_text().strip().splitlines()
        status, message = "crashed", lines[-1] if lines else ""
    else:
        status, message = "incomplete", "no summary.json: still running, or killed"
    return Job(folder, _parse_overrides(overrides or []), status, summary, _read_curve(folder / "metrics.jsonl"), message)


def _is_job(folder: Path) -> bool:
    return any((folder / name).exists() for name in (".hydra/overrides.yaml", "summary.json", "metrics.jsonl"))


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder below `sweep_dir` (any depth), in path order."""
    jobs = []
    for root, dirs, _ in os.walk(sweep_dir):
        dirs[:] = sorted(d for d in dirs if d not in NOT_JOBS)
        folder = Path(root)
        if folder != sweep_dir and _is_job(folder):
            jobs.append(read_job(folder))
            dirs[:] = []
    return jobs


# --- grouping, statistics, ranking ----------------------------------------------------------

def varying_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose value differs between jobs (absent counts as a value)."""
    keys = sorted({key for job in jobs for key in job.overrides})
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def group(jobs: list[Job], varying: list[str]) -> list[Row]:
    keys = [key for key in varying if key != SEED]
    rows: dict[tuple[str | None, ...], Row] = {}
    for job in jobs:
        identity = tuple(job.overrides.get(key) for key in keys)
        if identity not in rows:
            overrides = {key: value for key, value in zip(keys, identity) if value is not None}
            label = " ".join(f"{key}={value}" for key, value in overrides.items()) or "all jobs"
            rows[identity] = Row(label, overrides, [])
        rows[identity].jobs.append(job)
    for row in rows.values():
        row.stats = {metric: _mean_std([v for job in row.ok if (v := job.value(metric)) is not None])
                     for metric in METRICS}
    return list(rows.values())


def default_metric(jobs: list[Job]) -> str:
    """best_val_bpc when any job has it (a character LM), else best_val_seq_acc (a sequence decoder),
    else best_val_acc (classification), else best_val_loss: metrics.RANKING."""
    for metric in RANKING:
        if any(job.value(f"best_{metric}") is not None for job in jobs):
            return f"best_{metric}"
    return f"best_{RANKING[-1]}"


def rank(rows: list[Row], metric: str) -> list[Row]:
    """Best first by the metric's mean; configurations without a result last. Marks each row
    against the best by the noise rule."""
    sign = -1.0 if higher_is_better(metric) else 1.0
    scored = sorted((row for row in rows if row.stats[metric][0] is not None),
                    key=lambda row: (sign * row.stats[metric][0], row.label))
    unscored = sorted((row for row in rows if row.stats[metric][0] is None), key=lambda row: row.label)
    for row in unscored:
        row.verdict = "no result"
    if scored:
        best_mean, best_std = scored[0].stats[metric]
        scored[0].verdict = "best"
        for row in scored[1:]:
            mean, std = row.stats[metric]
            if std is None or best_std is None:
                row.verdict = "? (1 seed)"
            elif abs(mean - best_mean) <= max(std, best_std):
                row.verdict = "within noise"
            else:
                row.verdict = "worse"
    return scored + unscored


def build(sweep_dir: Path, metric: str | None = None, config_errors: dict[str, list[str]] | None = None) -> Report:
    """The report of the jobs in `sweep_dir` and of `config_errors` (the jobs refused on a config
    error, which left no folder: {name: overrides})."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a folder; give a sweep folder (multirun/...)")
    check_metric(metric)
    jobs = find_jobs(sweep_dir)
    jobs += [Job(sweep_dir / name, _parse_overrides(overrides), "config error",
                 message="stopped on a config error (see the console)")
             for name, overrides in (config_errors or {}).items()]
    if not jobs:
        raise ConfigError(f"{sweep_dir} holds no sweep jobs (folders with .hydra/overrides.yaml or summary.json)")
    varying = varying_keys(jobs)
    metric = metric or default_metric(jobs)
    return Report(sweep_dir, metric, rank(group(jobs, varying), metric), jobs, varying)


# --- writing --------------------------------------------------------------------------------

def _number(metric: str, value: float | None) -> str:
    return "-" if value is None else FORMATS.get(metric, "{:.4f}").format(value)


def _mean_pm_std(row: Row, metric: str) -> str:
    mean, std = row.stats[metric]
    if mean is None:
        return "-"
    return _number(metric, mean) + ("" if std is None else f" ± {_number(metric, std)}")


def _seeds(row: Row) -> str:
    return " ".join(job.overrides.get(SEED, "?") for job in row.ok)


def _failed(row: Row) -> str:
    return " ".join(f"{job.folder.name}:{job.status}" for job in row.failed)


TABLE = ("best_val_bpc", "final_val_bpc", "test_bpc", "best_val_acc", "best_val_loss", "final_val_acc",
         "final_val_loss", "final_train_loss", "test_acc", "test_loss", "final_val_seq_acc", "final_val_token_acc",
         "test_seq_acc", "test_token_acc", "epochs_to_best", "wall_s", "samples_per_s")


def _columns(report: Report) -> list[str]:
    """The table's metric columns: the ranking metric first, accuracy and test figures only where a job has them."""
    has_acc = any(job.value("best_val_acc") is not None for job in report.jobs)
    has_test = any(job.value("test_loss") is not None for job in report.jobs)
    has_bpc = any(job.value("best_val_bpc") is not None for job in report.jobs)
    shown = [m for m in TABLE if (has_acc or not m.endswith("_acc")) and (has_test or not m.startswith("test_"))
             and (has_bpc or not m.endswith("_bpc"))
             and (m not in DECODED or any(job.value(m) is not None for job in report.jobs))]
    return [report.metric] + [m for m in shown if m != report.metric]


def markdown(report: Report) -> str:
    direction = "higher" if higher_is_better(report.metric) else "lower"
    failed = [job for job in report.jobs if not job.ok]
    columns = _columns(report)
    lines = [
        f"# Sweep report: {report.sweep_dir.name}",
        "",
        f"{len(report.jobs)} jobs, {len(report.rows)} configurations (the overrides that vary across the "
        f"sweep, seed excluded: {', '.join(k for k in report.varying if k != SEED) or 'none'}), "
        f"{len(failed)} failed or incomplete.",
        f"Ranked by **{report.metric}** ({direction} is better); every number is the mean ± sample "
        "standard deviation over the seeds that finished.",
        f"Noise rule: {NOISE_RULE}.",
        "",
        "| rank | configuration | seeds | vs best | " + " | ".join(columns) + " | failed |",
        "|" + " --- |" * (len(columns) + 5),
    ]
    for number, row in enumerate(report.rows, 1):
        cells = [str(number), row.label, str(len(row.ok)), row.verdict]
        cells += [_mean_pm_std(row, metric) for metric in columns] + [_failed(row) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "## Failed or incomplete jobs", "", "| job | status | message |", "| --- | --- | --- |"]
        for job in failed:
            lines.append(f"| {job.folder.name} | {job.status} | {job.message.replace('|', '/')} |")
    lines += ["", "![validation curves](report.png)", ""]
    return "\n".join(lines)


def write_csv(report: Report, path: Path) -> None:
    keys = [key for key in report.varying if key != SEED]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["rank", "configuration", *keys, "n_seeds", "n_failed", "vs_best",
                     *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")], "seeds", "failed"])
    for number, row in enumerate(report.rows, 1):
        stats = [("" if v is None else v) for m in METRICS for v in row.stats[m]]
        writer.writerow([number, row.label, *[row.overrides.get(k, "") for k in keys], len(row.ok),
                         len(row.failed), row.verdict, *stats, _seeds(row), _failed(row)])
    write_atomic(path, text.getvalue())


def _curve(jobs: list[Job], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per epoch: mean, min and max over the jobs that logged a finite value there."""
    by_epoch: dict[int, list[float]] = {}
    for job in jobs:
        for line in job.curve:
            value = line.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                by_epoch.setdefault(int(line["epoch"]), []).append(float(value))
    epochs = sorted(by_epoch)
    return (epochs, [statistics.fmean(by_epoch[e]) for e in epochs],
            [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs])


def plot(report: Report, path: Path) -> None:
    """Validation curves of every configuration: mean over seeds, band from min to max.

    matplotlib's object API on the Agg canvas (no pyplot: no global backend, no figure left open
    in a process that writes many reports), with fixed margins: tight_layout took most of the
    drawing time, as constrained layout did for curves.png."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    keys = [key for key in ("val_seq_acc", "val_acc", "val_loss")
            if any(isinstance(line.get(key), (int, float)) for job in report.jobs for line in job.curve)]
    figure = Figure(figsize=(6.5 * max(len(keys), 1), 4.5))
    figure.subplots_adjust(left=0.1 / max(len(keys), 1), right=0.98, bottom=0.12, top=0.88, wspace=0.22)
    axes = figure.subplots(1, max(len(keys), 1), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for number, row in enumerate(report.rows):
            epochs, mean, low, high = _curve(row.ok, key)
            if not epochs:
                continue
            color = f"C{number % 10}"  # the default colour cycle, tab10
            axis.plot(epochs, mean, color=color, label=f"{row.label} (n={len(row.ok)})")
            axis.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        if key == "val_loss":
            axis.set_yscale("log")
    if keys:
        axes[0][0].legend(fontsize="small")
    figure.suptitle(f"{report.sweep_dir.name}: validation curves, mean over seeds (band: min to max)", fontsize="medium")
    figure.savefig(path, dpi=110)


def table(report: Report) -> Any:
    from rich.table import Table

    columns = _columns(report)[:1] + ["final_val_acc", "best_val_loss", "test_bpc", "test_acc", "epochs_to_best", "wall_s",
                                       "samples_per_s"]
    columns = [m for m in dict.fromkeys(columns) if m in _columns(report)]
    result = Table(title=f"{report.sweep_dir.name}: ranked by {report.metric}",
                   caption="vs best: within noise = |mean difference| <= the larger std over seeds")
    for name in ["#", "configuration", "seeds", "vs best", *columns, "failed"]:
        result.add_column(name, justify="left" if name in ("configuration", "vs best", "failed") else "right")
    for number, row in enumerate(report.rows, 1):
        result.add_row(str(number), row.label, str(len(row.ok)), row.verdict,
                       *[_mean_pm_std(row, m) for m in columns], _failed(row) or "-")
    return result


def write(report: Report, plot_curves: bool = True) -> list[Path]:
    """report.md, report.csv and report.png in the sweep folder; returns the paths written."""
    written = [report.sweep_dir / "report.md", report.sweep_dir / "report.csv"]
    write_atomic(written[0], markdown(report))
    write_csv(report, written[1])
    if plot_curves:
        plot(report, report.sweep_dir / "report.png")
        written.append(report.sweep_dir / "report.png")
    return written


def write_and_show(sweep_dir: Path, metric: str | None = None, plot: bool = True,
                   config_errors: dict[str, list[str]] | None = None) -> Report:
    from rich.console import Console

    report = build(sweep_dir, metric, config_errors)
    written = write(report, plot)
    console = Console(width=None if sys.stdout.isatty() else 160)  # a log file is not 80 columns wide
    console.print(table(report))
    console.print("report: " + ", ".join(str(path) for path in written))
    return report


def main(argv: list[str] | None = None) -> None:
    """`train-report PATH [--metric NAME] [--no-plot]`."""
    parser = argparse.ArgumentParser(prog="train-report", description="Write report.md, report.csv and report.png "
                                     "for a sweep folder (finished, running, interrupted or with failed jobs).")
    parser.add_argument("path", type=Path, help="a sweep folder, e.g. multirun/experiment=ablate_norm-1a2b3c4d")
    parser.add_argument("--metric", help="rank by this (default best_val_bpc, else best_val_seq_acc, else "
                        "best_val_acc, if present, "
                        "else best_val_loss); "
                        f"one of {', '.join(METRICS)}")
    parser.add_argument("--no-plot", action="store_true", help="skip report.png")
    args = parser.parse_args(argv)
    try:
        write_and_show(args.path, args.metric, plot=not args.no_plot)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
