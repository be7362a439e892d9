"""Hostile and broken input, table-driven: every case exits non-zero with one clear line, no
traceback, no run folder left behind, and an existing run and its checkpoints untouched."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from fakes import PlantsMarker, make_images

TRAIN = str(Path(sys.executable).with_name("train"))
FAST = ["data=synthetic", "epochs=1", "log_every=5"]


def pickled_code(root: Path) -> str:
    torch.save({"model": PlantsMarker(root / "code-ran")}, root / "evil.pt")
    return str(root / "evil.pt")


def truncated_checkpoint(root: Path) -> str:
    torch.save({"train_state": {}, "model": {"w": torch.ones(100)}}, root / "cut.pt")
    (root / "cut.pt").write_bytes((root / "cut.pt").read_bytes()[:100])
    return str(root / "cut.pt")


def tensors_file(root: Path, nan: bool = False, one_class: bool = False) -> str:
    x = torch.randn(64, 1, 8)
    if nan:
        x[3, 0, 2] = float("nan")
    y = torch.zeros(64, dtype=torch.long) if one_class else torch.arange(64) % 2
    torch.save({"x_train": x, "y_train": y, "x_val": x[:16], "y_val": y[:16]}, root / "arrays.pt")
    return str(root / "arrays.pt")


def images(root: Path, classes: dict[str, int]) -> str:
    make_images(root / "images", classes)
    return str(root / "images")


def empty_images(root: Path) -> str:
    for name in ("cat", "dog"):
        (root / "images" / name).mkdir(parents=True)
    return str(root / "images")


@dataclass
class Case:
    name: str
    args: list[str]
    message: str
    # Substitutions: "{X}" in args is replaced by make[X](root) for the case's own temp folder.
    make: dict[str, Callable[[Path], str]] = field(default_factory=dict)
    no_fast: bool = False


CASES = [
    Case("unknown choice", ["norm=foo"], "Could not find 'norm/foo'; available options in 'norm': batchnorm"),
    Case("misspelt choice", ["sched=cosine_warmpu"], "available options in 'sched'"),
    Case("unknown group", ["optimiser=adam"], "Could not override 'optimiser'"),
    Case("unknown key", ["optim.learning_rate=0.1"], "Could not override 'optim.learning_rate'"),
    Case("appended key", ["+lr=0.1"], "lr is not a setting; valid top-level keys"),
    Case("zero lr", ["optim.lr=0"], "optim.lr=0 must be > 0"),
    Case("negative lr", ["optim.lr=-1"], "optim.lr=-1 must be > 0"),
    Case("lr not a number", ["optim.lr=fast"], "optim.lr='fast' must be a number"),
    Case("epochs not a number", ["epochs=many"], "epochs=many must be an integer >= 1", no_fast=True),
    Case("zero epochs", ["epochs=0"], "epochs=0 must be an integer >= 1", no_fast=True),
    Case("zero batch", ["batch_size=0"], "batch_size=0 must be an integer >= 1"),
    Case("negative max_steps", ["max_steps=-5"], "max_steps=-5 must be an integer >= 1, or null"),
    Case("dropout 1", ["regularisation.dropout=1.0"], "regularisation.dropout=1.0 must be in [0, 1)"),
    Case("negative input dropout", ["regularisation.input_dropout=-0.1"], "regularisation.input_dropout=-0.1 must be in [0, 1)"),
    Case("negative patience", ["early_stopping=val_loss", "early_stopping.patience=-1"], "early_stopping.patience=-1 must be >= 0"),
    Case("warmup longer than training", ["sched.warmup_steps=100000"], "sched.warmup_steps=100000 is not shorter than training"),
    Case("nesterov without momentum", ["optim=nesterov", "optim.momentum=0"], "optim=nesterov needs optim.momentum > 0"),
    Case("groups do not divide", ["norm=groupnorm", "norm.groups=3"], "norm.groups=3 does not divide a layer of width 32"),
    Case("batchnorm at batch 1", ["batch_size=1"], "batch_size=1 with norm=batchnorm"),
    Case("unknown nan policy", ["nan_policy=ignore"], "nan_policy='ignore' is unknown; valid: stop, skip"),
    Case("keep no checkpoints", ["checkpoint.keep_last=0"], "checkpoint.keep_last=0 must be an integer >= 1"),
    Case("unknown device", ["device=tpu"], "device='tpu' is unknown; valid: auto, cpu, cuda"),
    Case("2-D model on 1-D data", ["model=cnn"], "model=cnn needs images (C, H, W)"),
    Case("metric never produced", ["data=adding", "early_stopping=val_acc"], "early_stopping=val_acc needs a classification task"),
    Case("missing pretrained file", ["init=pretrained", "init.path=/no/such/file.pt"], "init.path=/no/such/file.pt does not exist"),
    Case("pretrained file with pickled code", ["init=pretrained", "init.path={EVIL}"], "could not be loaded as weights",
         make={"EVIL": pickled_code}),
    Case("missing checkpoint", ["resume=/no/such/ckpt.pt"], "resume=/no/such/ckpt.pt does not exist"),
    Case("truncated checkpoint", ["resume={CUT}"], "was refused: it is truncated or damaged", make={"CUT": truncated_checkpoint}),
    Case("checkpoint with pickled code", ["resume={EVIL}"], "was refused: it carries pickled code", make={"EVIL": pickled_code}),
    Case("unreachable data set", ["data=cifar10", "model=cnn", "data.root={ROOT}", "data.download=false"],
         "data=cifar10: files missing", make={"ROOT": lambda root: str(root / "empty")}),
    Case("image folder missing", ["data=imagefolder", "model=cnn", "data.path=/no/such/images"], "data.path=/no/such/images does not exist"),
    Case("single-class image folder", ["data=imagefolder", "model=cnn", "data.path={IMAGES}"], "at least 2 classes",
         make={"IMAGES": lambda root: images(root, {"cat": 4})}),
    Case("empty image folder", ["data=imagefolder", "model=cnn", "data.path={IMAGES}"], "has no usable images",
         make={"IMAGES": empty_images}),
    Case("NaN in the data", ["data=tensors", "model=mlp", "data.path={ARRAYS}"], "x_train holds 1 non-finite values",
         make={"ARRAYS": lambda root: tensors_file(root, nan=True)}),
    Case("single-class tensors", ["data=tensors", "model=mlp", "data.path={ARRAYS}"], "classification needs at least 2",
         make={"ARRAYS": lambda root: tensors_file(root, one_class=True)}),
    Case("unwritable output folder", ["hydra.run.dir=/proc/trainer-run"], "/proc/trainer-run"),
]


def invoke(case: Case, root: Path) -> subprocess.CompletedProcess[str]:
    substitutions = {key: make(root) for key, make in case.make.items()}
    args = [arg.format(**substitutions) for arg in case.args]
    run_dir = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={root / 'run'}"]
    return subprocess.run([TRAIN, *([] if case.no_fast else FAST), *args, *run_dir],
                          capture_output=True, text=True, timeout=180, cwd=root)


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Run every case once, two at a time (each is mostly interpreter start-up)."""
    roots = {case.name: tmp_path_factory.mktemp("case") for case in CASES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(lambda case: invoke(case, roots[case.name]), CASES)
        return {case.name: (roots[case.name], result) for case, result in zip(CASES, results)}


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_clear_line(outcomes: dict, case: Case) -> None:
    root, result = outcomes[case.name]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert case.message in lines[0]
    assert not (root / "run").exists(), "a failed start must leave no run folder"
    assert not (root / "code-ran").exists(), "pickled code must never run"


def test_existing_run_and_checkpoints_are_untouched(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert subprocess.run([TRAIN, *FAST, f"hydra.run.dir={run_dir}"], capture_output=True).returncode == 0
    before = fingerprint(run_dir)
    for args in (["optim.lr=0"], ["model.channels=16", "resume=auto"], []):
        result = subprocess.run([TRAIN, *FAST, *args, f"hydra.run.dir={run_dir}"], capture_output=True, text=True)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fingerprint(run_dir) == before
