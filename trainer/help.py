"""`train --help`: every group, every choice with its one-line description and its settings,
read from conf/ so a new YAML appears without editing this file."""
from __future__ import annotations

from pathlib import Path

import yaml

from trainer.config import GROUPS
from trainer.tasks import TASKS

NAME_WIDTH = 23  # the longest choice name (ablate_regularisation) and a space

# Groups that are not training tricks but are chosen the same way.
EXTRA_GROUPS = ("logger", "experiment", "hparams_search")

USAGE = """\
train: a config-driven training CLI where every deep-learning trick is one switch away.

Usage:
  train                                            # MNIST-1D, small CNN, CPU or CUDA
  train init=he norm=layernorm sched=cosine_warmup
  train epochs=5 batch_size=256 optim.lr=3e-3 regularisation=dropout regularisation.l1=1e-5
  train -m init=xavier,he,orthogonal norm=none,batchnorm seed=0,1,2   # one run per combination
  train data=seq2seq model=seq2seq norm=none model.attention=additive teacher_forcing=linear decoding=beam
  torchrun --standalone --nproc_per_node=2 -m trainer.cli batch_size=50   # data-parallel, 2 processes
  train processes=2 batch_size=50                  # the same, started by train itself (sweeps too)
  train -m seed=0,1 hydra/launcher=slurm hydra.launcher.gpus_per_node=4   # each run a SLURM job, a process per GPU

batch_size is per process: under torchrun or SLURM a step trains on batch_size x processes x trainer.accumulate
samples (batch_size=50 on 2 processes: 100 samples a step, as a plain `train`).
"""

FOOTER = """\
Show the composed config of a command without training: train --cfg job [overrides...]
Hydra's own options: train --hydra-help
Each run writes outputs/DATE/TIME/ (a sweep: multirun/COMMAND-HASH/CONFIGURATION/) with metrics.jsonl,
summary.json and Hydra's .hydra/ record of the config.
"""


def _description(path: Path) -> str:
    """The YAML's leading comment, joined into one line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @"):  # Hydra's package header is no description
            lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    prefix = f"{path.stem}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _value(value: object) -> str:
    """YAML spelling, as the user types it back: null, true, false."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):  # as typed on the command line, without spaces
        return f"[{','.join(_value(item) for item in value)}]"
    return str(value)


def _settings(path: Path) -> str:
    node = yaml.safe_load(path.read_text()) or {}
    # A preset's hydra: section (its sweep) and defaults are shown by `train --cfg hydra experiment=NAME`.
    return " ".join(f"{key}={_value(value)}" for key, value in node.items()
                    if key not in ("_target_", "name", "hydra", "defaults"))


def catalogue(conf_dir: Path) -> str:
    top = yaml.safe_load((conf_dir / "config.yaml").read_text())
    defaults = {group: choice for item in top["defaults"] if isinstance(item, dict) for group, choice in item.items()}
    parts = [USAGE, "Groups (GROUP=CHOICE; the default is marked *; override a setting with GROUP.KEY=VALUE):"]
    for group in (*GROUPS, *(g for g in EXTRA_GROUPS if (conf_dir / g).is_dir())):
        parts.append(f"\n  {group}")
        for path in sorted((conf_dir / group).glob("*.yaml")):
            mark = "*" if defaults.get(group) == path.stem else " "
            # At least one space: a name longer than the column (evidence_early_stopping) must not run into its text.
            parts.append(f"   {mark}{path.stem:<{NAME_WIDTH - 1}} {_description(path)}")
            settings = _settings(path)
            if settings:
                parts.append(f"    {'':<{NAME_WIDTH}}{settings}")
    parts.append("\nData options, for any data= (data.KEY=VALUE):")
    parts.append("  " + " ".join(f"{key}={_value(value)}" for key, value in top["data"].items()))
    parts.append("\nTasks (task=NAME):")
    for name, text in TASKS.items():
        parts.append(f"    {name:<{NAME_WIDTH}}{text}")
        if isinstance(top.get(name), dict):  # the task's own settings node
            parts.append(f"    {'':<{NAME_WIDTH}}" + " ".join(f"{name}.{key}={_value(value)}" for key, value in top[name].items()))
    parts.append("\nTop-level keys (KEY=VALUE):")
    parts.append("  " + " ".join(f"{key}={_value(value)}" for key, value in top.items()
                                 if key not in ("defaults", "hydra", "data", *TASKS)))
    parts.append("")
    parts.append(FOOTER)
    return "\n".join(parts)
