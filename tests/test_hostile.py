"""Hostile and broken input, table-driven: every case exits 2 with one clear line on stderr (or
runs cleanly where the input is valid), no traceback, nothing left behind, and nothing that existed
before changed, byte for byte: not a user's folder, not an earlier run's files or its .hydra/ record.

The table runs in this process (tests/in_process.py): the cases are cheap once torch is loaded.
A few cases run through the real `train` console script as well."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from fakes import PlantsMarker, make_images
from in_process import Outcome, train_in_process
from trainer.observe.records import claim

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


def arrays(change: Callable[[dict], None] = lambda arrays: None, suffix: str = ".pt") -> Callable[[Path], str]:
    """A user's arrays file: 64 + 16 samples of shape (1, 8), labels 0..3, then `change` applied."""
    def make(root: Path) -> str:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(80, 1, 8, generator=generator)
        y = torch.arange(80) % 4
        contents = {"x_train": x[:64], "y_train": y[:64], "x_val": x[64:], "y_val": y[64:]}
        change(contents)
        path = root / f"arrays{suffix}"
        if suffix == ".npz":
            import numpy as np
            np.savez(path, **{key: np.asarray(value) for key, value in contents.items()})
        else:
            torch.save(contents, path)
        return str(path)
    return make


def saved(value: object) -> Callable[[Path], str]:
    """A .pt file holding `value` (torch.save)."""
    def make(root: Path) -> str:
        torch.save(value, root / "saved.pt")
        return str(root / "saved.pt")
    return make


def text_file(text: str) -> Callable[[Path], str]:
    """A plain file of the user's: not a tensor file, not a folder."""
    def make(root: Path) -> str:
        (root / "notes.txt").write_text(text)
        return str(root / "notes.txt")
    return make


def images(root: Path, classes: dict[str, int]) -> str:
    make_images(root / "images", classes)
    return str(root / "images")


def empty_images(root: Path) -> str:
    for name in ("cat", "dog"):
        (root / "images" / name).mkdir(parents=True)
    return str(root / "images")


def user_folder(*files: str) -> Callable[[Path], str]:
    """A folder of the user's that exists before the command, holding `files` (empty if none)."""
    def make(root: Path) -> str:
        folder = root / "mine"
        folder.mkdir()
        for name in files:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(f"the user's own {name}\n")
        return str(folder)
    return make


def finished_run(root: Path) -> str:
    """A copy of a finished run (metrics, summary, checkpoints, .hydra/ record), made once per session."""
    shutil.copytree(FINISHED_RUN, root / "done")
    return str(root / "done")


def unwritable_run(root: Path) -> str:
    """A finished run whose metrics.jsonl cannot be written (a folder in its place): resuming it stops
    on an OSError, as it does in a read-only folder (which root, running the tests, may still write)."""
    finished_run(root)
    (root / "done" / "metrics.jsonl").unlink()
    (root / "done" / "metrics.jsonl").mkdir()
    return str(root / "done")


def kept_checkpoints(root: Path) -> str:
    """A folder holding only a finished run's checkpoints/ (its records not kept, or not copied)."""
    shutil.copytree(FINISHED_RUN / "checkpoints", root / "kept" / "checkpoints")
    return str(root / "kept")


def finished_sweep_job(root: Path) -> str:
    """A finished run where a sweep keeps one, with the sweep's record of its configuration."""
    job = root / "multirun" / "sweep-1a2b3c4d" / "norm=none,seed=0"
    shutil.copytree(FINISHED_RUN, job)
    (job / ".hydra" / "resume.json").write_text('{"config": "0123456789abcdef", "objective": 0.5}\n')
    return str(job)


def checkpoint_copy(where: str) -> Callable[[Path], str]:
    """The finished run's latest checkpoint copied to `where` (under the case's folder, made if
    missing, a run copied to done/ first where it names one): a checkpoint outside its run's folder."""
    def make(root: Path) -> str:
        if where.startswith("done/"):
            finished_run(root)
        path = root / where
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FINISHED_RUN / "checkpoints" / "step_00000005.pt", path)
        return str(path)
    return make


def edited_checkpoint(edit: Callable[[dict], None]) -> Callable[[Path], str]:
    """A finished run (done/) with an earlier checkpoint of it edited by `edit` as done/checkpoints/edited.pt."""
    def make(root: Path) -> str:
        finished_run(root)
        payload = torch.load(root / "done" / "checkpoints" / "step_00000005.pt", weights_only=True)
        edit(payload)
        torch.save(payload, root / "done" / "checkpoints" / "edited.pt")
        return str(root / "done" / "checkpoints" / "edited.pt")
    return make


def rename_a_weight(payload: dict) -> None:
    name = next(iter(payload["model"]))
    payload["model"][f"renamed.{name}"] = payload["model"].pop(name)


@dataclass
class Case:
    name: str
    args: list[str]
    message: str
    # Substitutions: "{X}" in args is replaced by make[X](root) for the case's own temp folder.
    make: dict[str, Callable[[Path], str]] = field(default_factory=dict)
    no_fast: bool = False
    code: int = 2  # 0: valid input that must run cleanly (its message is looked for on stdout)
    default_run_dir: bool = False  # leave hydra.run.dir at outputs/DATE/TIME under the case's folder


CASES = [
    Case("unknown choice", ["norm=foo"], "Could not find 'norm/foo'; available options in 'norm': batchnorm"),
    Case("misspelt choice", ["sched=cosine_warmpu"], "available options in 'sched'"),
    Case("unknown choice in a list", ["logger=[csv,tensorbord]"],
         "Could not load 'logger/tensorbord'; available options in 'logger': console, csv, tensorboard"),
    # Hydra says "Could not override" and suggests `+key=...`, a key nothing reads: the valid keys instead.
    Case("unknown group", ["optimiser=adam"], "optimiser is not a setting; valid top-level keys: augment, batch_size"),
    Case("unknown key", ["optim.learning_rate=0.1"],
         "optim.learning_rate is not a setting of optim=adamw; valid: betas, decay_norm_and_bias, eps, lr, weight_decay"),
    Case("misspelt key of a chosen option", ["sched=warmup_linear", "sched.warmup_step=3"],
         "sched.warmup_step is not a setting of sched=warmup_linear; valid: min_lr_ratio, warmup_fraction, warmup_steps"),
    Case("misspelt key of a settings node", ["trainer.acumulate=2"],
         "trainer.acumulate is not a setting; valid: accumulate, channels_last, compile, threads"),
    Case("misspelt key in a sweep", ["-m", *FAST, "sched=constant,step", "sched.warmup_step=3", "hydra.sweep.dir={MINE}"],
         "sched.warmup_step is not a setting of sched=constant; valid: none, it takes no settings",
         make={"MINE": user_folder("notes.txt")}, no_fast=True),
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
    Case("curves not a boolean", ["curves=sometimes"], "curves=sometimes must be true or false"),
    Case("unknown nan policy", ["nan_policy=ignore"], "nan_policy='ignore' is unknown; valid: stop, skip"),
    Case("keep no checkpoints", ["checkpoint.keep_last=0"], "checkpoint.keep_last=0 must be an integer >= 1"),
    Case("a negative checkpoint interval", ["checkpoint.min_interval_s=-1"],
         "checkpoint.min_interval_s=-1 must be a number of seconds >= 0"),
    Case("a checkpoint interval in words", ["checkpoint.min_interval_s=often"],
         "checkpoint.min_interval_s=often must be a number of seconds >= 0"),
    Case("layer statistics never", ["layer_stats_every=0"], "layer_stats_every=0 must be an integer >= 1"),
    Case("layer statistics in words", ["layer_stats_every=often"], "layer_stats_every=often must be an integer >= 1"),
    Case("unknown device", ["device=tpu"], "device='tpu' is unknown; valid: auto, cpu, cuda"),
    Case("2-D model on 1-D data", ["model=cnn"], "model=cnn needs images (C, H, W)"),
    Case("metric never produced", ["data=adding", "early_stopping=val_acc"], "early_stopping=val_acc needs a classification task"),
    Case("missing pretrained file", ["init=pretrained", "init.path=/no/such/file.pt"], "init.path=/no/such/file.pt does not exist"),
    Case("pretrained file with pickled code", ["init=pretrained", "init.path={EVIL}"], "could not be loaded as weights",
         make={"EVIL": pickled_code}),
    Case("missing checkpoint", ["resume=/no/such/ckpt.pt"], "resume=/no/such/ckpt.pt does not exist"),
    Case("truncated checkpoint", ["resume={CUT}"], "was refused: it is truncated or damaged", make={"CUT": truncated_checkpoint}),
    Case("checkpoint with pickled code", ["resume={EVIL}"], "was refused: it carries pickled code", make={"EVIL": pickled_code}),
    # torch's unpickler calls any file that is not its own "pickled code": a JSON file is no attack, nor a checkpoint.
    Case("a run's index.json as the checkpoint", ["resume={DONE}/checkpoints/index.json"],
         "index.json is not a checkpoint (torch.save did not write it); give a run folder or one of its checkpoints/*.pt files",
         make={"DONE": finished_run}),
    Case("export of a run's summary.json", ["task=export", "resume={DONE}/summary.json"],
         "summary.json is not a checkpoint (torch.save did not write it)", make={"DONE": finished_run}),
    # A checkpoint outside a run's checkpoints/ has no run to continue: never the folder two levels up.
    Case("a loose checkpoint file", ["resume={CKPT}"], "is not in a run's checkpoints/ folder",
         make={"CKPT": checkpoint_copy("Downloads/ckpt.pt")}),
    Case("a checkpoint kept inside another run", ["resume={CKPT}"], "is not in a run's checkpoints/ folder",
         make={"CKPT": checkpoint_copy("done/kept/ckpt.pt")}),
    # A checkpoint whose contents do not fit: refused before the run's metrics are cut back to its step.
    Case("a checkpoint of another architecture", ["resume={CKPT}"], "does not fit this model (Error(s) in loading",
         make={"CKPT": edited_checkpoint(rename_a_weight)}),
    Case("a checkpoint without its optimizer", ["resume={CKPT}"], "lacks optimizer",
         make={"CKPT": edited_checkpoint(lambda payload: payload.pop("optimizer"))}),
    # A finished run is never rewound to a checkpoint named by hand: its later steps would be replaced.
    Case("an earlier checkpoint of a finished run", ["resume={CKPT}"], "is step 2 of",
         make={"CKPT": edited_checkpoint(lambda payload: payload["train_state"].update(step=2))}),
    Case("a user's own checkpoints folder", ["resume={CKPT}"], "is not in a run's checkpoints/ folder",
         make={"CKPT": checkpoint_copy("mine/checkpoints/model.pt")}),
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

    # 1. A folder that existed before the command is never removed, whatever it holds.
    Case("config error in a user's folder", ["optim.lr=0", "hydra.run.dir={MINE}"], "optim.lr=0 must be > 0",
         make={"MINE": user_folder("train.log")}),
    Case("config error in a user's empty folder", ["optim.lr=0", "hydra.run.dir={MINE}"], "optim.lr=0 must be > 0",
         make={"MINE": user_folder()}),
    Case("config error in a user's folder of Hydra-named files", ["batch_size=0", "hydra.run.dir={MINE}"],
         "batch_size=0 must be", make={"MINE": user_folder(".hydra/config.yaml", "cli.log")}),
    Case("unknown choice in a user's folder", ["norm=foo", "hydra.run.dir={MINE}"], "Could not find 'norm/foo'",
         make={"MINE": user_folder("notes.txt")}),
    Case("missing data file in a user's folder", ["data=tensors", "data.path=/no/such.pt", "hydra.run.dir={MINE}"],
         "data.path=/no/such.pt does not exist", make={"MINE": user_folder("notes.txt")}),
    Case("missing checkpoint in a user's folder", ["resume=/no/such/ckpt.pt", "hydra.run.dir={MINE}"],
         "resume=/no/such/ckpt.pt does not exist", make={"MINE": user_folder("notes.txt")}),
    # A folder of the user's holding a file of the name a run or a task writes: never overwritten.
    *[Case(f"{' '.join(args) or 'a new run'} into a user's folder holding {name}", [*args, "hydra.run.dir={MINE}"],
           f"holds {name.split('/')[0]}, which this command would overwrite", make={"MINE": user_folder(name, "notes.txt")})
      for args, name in [([], "curves.png"), ([], "metrics.csv"), ([], "tensorboard/events"),
                         (["task=lr_find"], "lr_find.png")]],
    Case("a new run into a folder holding a sample task's result", ["hydra.run.dir={MINE}"],
         "already holds a run (sample.json)", make={"MINE": user_folder("sample.json")}),
    Case("new run folder inside a user's folder", ["optim.lr=0", "hydra.run.dir={MINE}/a/b"], "optim.lr=0 must be > 0",
         make={"MINE": user_folder("notes.txt")}),
    Case("run folder is a user's file", ["hydra.run.dir={FILE}"], "File exists",
         make={"FILE": text_file("the user's own notes\n")}),
    Case("plan in the working folder", ["task=plan", "hydra.run.dir=."], "no problems found", code=0),
    Case("plan in a user's folder", ["task=plan", "hydra.run.dir={MINE}"], "no problems found", code=0,
         make={"MINE": user_folder("notes.txt")}),
    Case("failing plan in a user's folder", ["task=plan", "optim.lr=0", "hydra.run.dir={MINE}"],
         "optim.lr=0 must be > 0", make={"MINE": user_folder("notes.txt")}),
    Case("plan in a new folder leaves nothing", ["task=plan", "hydra.run.dir=a/b/c"], "no problems found", code=0),
    Case("lr_find error in a user's folder", ["task=lr_find", "optim.lr=-1", "hydra.run.dir={MINE}"],
         "optim.lr=-1 must be > 0", make={"MINE": user_folder("notes.txt")}),
    Case("config error in the default outputs folder", ["optim.lr=0"], "optim.lr=0 must be > 0", default_run_dir=True),
    # 2. A refused command never rewrites an earlier run's files or its .hydra/ record.
    Case("another model into a finished run", ["model=mlp", "hydra.run.dir={DONE}"], "already holds a run",
         make={"DONE": finished_run}),
    Case("the same command into a finished run", ["hydra.run.dir={DONE}"], "already holds a run",
         make={"DONE": finished_run}),
    Case("a new run into a folder of a run's kept checkpoints", ["hydra.run.dir={KEPT}"],
         "already holds a run (checkpoints)", make={"KEPT": kept_checkpoints}),
    Case("a bad value into a finished run", ["optim.lr=0", "hydra.run.dir={DONE}"], "already holds a run",
         make={"DONE": finished_run}),
    Case("an unknown choice into a finished run", ["norm=foo", "hydra.run.dir={DONE}"], "Could not find 'norm/foo'",
         make={"DONE": finished_run}),
    Case("plan against a finished run", ["task=plan", "model=mlp", "hydra.run.dir={DONE}"], "no problems found",
         code=0, make={"DONE": finished_run}),
    Case("lr_find into a finished run", ["task=lr_find", "hydra.run.dir={DONE}"], "already holds a run",
         make={"DONE": finished_run}),
    Case("check_init into a finished run", ["task=check_init", "hydra.run.dir={DONE}"], "already holds a run",
         make={"DONE": finished_run}),
    Case("resume with another model", ["resume=auto", "model.channels=16", "hydra.run.dir={DONE}"],
         "cannot resume: the config differs", make={"DONE": finished_run}),
    Case("resume with another optimizer", ["resume=auto", "optim=sgd", "hydra.run.dir={DONE}"],
         "cannot resume: the config differs", make={"DONE": finished_run}),
    Case("resume the folder with another batch", ["resume={DONE}", "batch_size=16"],
         "cannot resume: the config differs", make={"DONE": finished_run}),
    Case("resume a run that cannot be written", ["resume={DONE}", "epochs=2"], "Is a directory",
         make={"DONE": unwritable_run}),
    # A job folder's name holds '=' and ',': Hydra takes it back only quoted (README, "Where a sweep writes").
    Case("another model into a finished sweep job", ["model=mlp", "hydra.run.dir='{JOB}'"], "already holds a run",
         make={"JOB": finished_sweep_job}),
    Case("resume a finished sweep job with another model", ["resume='{JOB}'", "model=mlp"],
         "cannot resume: the config differs", make={"JOB": finished_sweep_job}),
    Case("plan against a finished sweep job", ["task=plan", "hydra.run.dir='{JOB}'"], "no problems found", code=0,
         make={"JOB": finished_sweep_job}),
    Case("a character the override grammar lacks", ["sample.prime=5€"], "(quote the value: \"sample.prime='5€'\")"),
    Case("a sweep job folder unquoted", ["model=mlp", "hydra.run.dir={JOB}"], "must be quoted",
         make={"JOB": finished_sweep_job}),
    # 4. Every number is finite and in range before anything starts.
    *[Case(f"{override} is refused", [override, *extra], f"{override.split('=')[0]}={shown} must be a finite number")
      for override, shown, extra in [
          ("optim.lr=nan", "nan", []), ("optim.lr=inf", "inf", []), ("optim.lr=-inf", "-inf", []),
          ("optim.lr=1e308", "1e+308", []), ("optim.lr=1e39", "1e+39", []), ("optim.weight_decay=nan", "nan", []),
          ("init.std=nan", "nan", ["init=normal"]), ("init.std=inf", "inf", ["init=normal"]),
          ("clipping.max_norm=nan", "nan", ["clipping=norm"]), ("clipping.max_norm=inf", "inf", ["clipping=norm"]),
          ("clipping.clip_value=nan", "nan", ["clipping=value"]), ("regularisation.l1=inf", "inf", []),
          ("regularisation.l2=nan", "nan", []), ("regularisation.dropout=nan", "nan", []),
          ("regularisation.label_smoothing=nan", "nan", []), ("optim.momentum=inf", "inf", ["optim=momentum"]),
          ("optim.eps=nan", "nan", []), ("sched.warmup_fraction=nan", "nan", []),
          ("early_stopping.min_delta=nan", "nan", ["early_stopping=val_loss"]),
          ("augment.noise_std=inf", "inf", ["augment=shift"]),
      ]],
    Case("a NaN in a list", ["optim.betas=[nan,0.999]"], "optim.betas[0]=nan must be a finite number"),
    Case("a NaN for a tool task", ["task=tsne", "resume={DONE}", "tsne.perplexity=[nan]"],
         "tsne.perplexity[0]=nan must be a finite number", make={"DONE": finished_run}),
    *[Case(f"{override} for task={task}", [f"task={task}", "resume={DONE}", override], message, make={"DONE": finished_run})
      for task, override, message in [
          ("export", "+export.tol=0.1", "export.tol is not a setting; valid: fold_bn, tolerance"),
          ("export", "~export.tolerance", "export.tolerance is missing"),
          ("tsne", "+tsne.points=50", "tsne.points is not a setting; valid: max_points, perplexity"),
          ("sample", "+sample.temp=0.5", "sample.temp is not a setting; valid: count, length, prime, temperature"),
          ("sample", "~sample.length", "sample.length is missing"),
      ]],
    Case("export of a missing run", ["task=export", "resume=/no/such/run"], "resume=/no/such/run does not exist",
         default_run_dir=True),
    Case("negative seed", ["seed=-1"], "seed=-1 must be an integer from 0 to 4294967295"),
    Case("seed above 2**32-1", ["seed=4294967296"], "seed=4294967296 must be an integer from 0 to 4294967295"),
    Case("seed not a number", ["seed=abc"], "seed=abc must be an integer"),
    Case("seed a fraction", ["seed=1.5"], "seed=1.5 must be an integer"),
    Case("integer beyond int64", ["epochs=100000000000000000000"], "integers must be at most 2**63-1", no_fast=True),
    Case("NaN epochs", ["epochs=nan"], "epochs=nan must be an integer >= 1", no_fast=True),
    Case("infinite batch", ["batch_size=inf"], "batch_size=inf must be an integer >= 1"),
    Case("NaN max_steps", ["max_steps=nan"], "max_steps=nan must be an integer >= 1, or null"),
    # 5. Overrides that remove or null a group or a setting.
    *[Case(f"{override} is refused", [override], message) for override, message in [
        ("optim=null", "optim=null removes the optim group, which every run needs; choose one of: adam, adamw"),
        ("model=null", "model=null removes the model group"), ("logger=null", "logger=null removes the logger group"),
        ("norm=null", "norm=null removes the norm group"), ("data=null", "data=null removes the data group"),
        ("sched=null", "sched=null removes the sched group"), ("~optim", "~optim removes the optim group"),
        ("~norm", "~norm removes the norm group"), ("~epochs", "~epochs removes epochs, which every run needs"),
        ("~seed", "~seed removes seed"), ("~optim.lr", "optim.lr is missing: optim=adamw needs it"),
        # The settings config.yaml names (their readers take exactly its keys): once a traceback, or ignored.
        ("~checkpoint.keep_last", "checkpoint.keep_last is missing: every run reads it"),
        ("+checkpoint.keep=3", "checkpoint.keep is not a setting; valid: every_epochs, every_steps, keep_last"),
        ("~trainer.threads", "trainer.threads is missing: every run reads it"),
        ("+trainer.workers=4", "trainer.workers is not a setting; valid: accumulate, channels_last, compile, threads"),
        ("~sample.count", "sample.count is missing: every run reads it"),
        ("experiment=null", "experiment=null: experiment is off unless chosen"),
    ]],
    # 6. A user's own data is checked before any run folder is written.
    *[Case(f"data: {name}", ["data=tensors", "model=mlp", "data.path={ARRAYS}", *extra], message,
           make={"ARRAYS": arrays(change)})
      for name, change, message, extra in [
          ("negative label", lambda a: a["y_train"].__setitem__(0, -1), "y_train holds a negative label (-1)", []),
          ("label beyond num_classes", lambda a: None, "y_train holds label 3 but data.num_classes=3", ["data.num_classes=3"]),
          ("num_classes below 2", lambda a: None, "data.num_classes=1 must be an integer >= 2", ["data.num_classes=1"]),
          ("one-hot labels", lambda a: a.update(y_train=torch.nn.functional.one_hot(a["y_train"])),
           "y_train is one-hot, shape (64, 4)", []),
          ("2-D integer labels", lambda a: a.update(y_val=a["y_val"][:, None]), "y_val has shape (16, 1)", []),
          ("x_val of another shape", lambda a: a.update(x_val=a["x_val"][:, :, :4]),
           "x_train is (64, 1, 8) but x_val is (16, 1, 4)", []),
          ("empty validation split", lambda a: a.update(x_val=a["x_val"][:0], y_val=a["y_val"][:0]),
           "the val split is empty", []),
          ("empty training split", lambda a: a.update(x_train=a["x_train"][:0], y_train=a["y_train"][:0]),
           "the train split is empty", []),
          ("fewer labels than inputs", lambda a: a.update(y_train=a["y_train"][:60]),
           "x_train has 64 samples but y_train has 60", []),
          ("bool labels", lambda a: a.update(y_train=a["y_train"] > 1, y_val=a["y_val"] > 1), "labels are bool", []),
          ("float and integer labels", lambda a: a.update(y_train=a["y_train"].float()),
           "y_train is torch.float32 but y_val is torch.int64", []),
          ("a single value for y_val", lambda a: a.update(y_val=torch.tensor(3)), "y_val is a single value", []),
          ("inputs without a feature axis", lambda a: a.update(x_train=a["x_train"][:, 0, 0], x_val=a["x_val"][:, 0, 0]),
           "x_train has shape (64,); inputs need a feature axis", []),
          ("complex inputs", lambda a: a.update(x_train=a["x_train"].to(torch.complex64)),
           "x_train is torch.complex64; inputs must be floating point", []),
          ("infinity in x_val", lambda a: a["x_val"].__setitem__((2, 0, 3), float("inf")),
           "x_val holds 1 non-finite values", []),
          ("NaN in regression targets", lambda a: a.update(y_train=torch.randn(64), y_val=torch.full((16,), float("nan"))),
           "y_val holds 16 non-finite values", []),
          ("regression targets of two widths", lambda a: a.update(y_train=torch.randn(64, 2), y_val=torch.randn(16, 3)),
           "regression targets need the same width", []),
          ("a missing array", lambda a: a.pop("y_val"), "lacks y_val", []),
          ("a batch larger than the data", lambda a: None, "batch_size=100 is larger than the training set (64 samples)",
           ["batch_size=100"]),
      ]],
    Case("data: arrays that are not a dict", ["data=tensors", "model=mlp", "data.path={FILE}"], "holds a Tensor",
         make={"FILE": saved(torch.zeros(3))}),
    Case("data: a file that is not arrays", ["data=tensors", "model=mlp", "data.path={FILE}"], "could not be read as tensors",
         make={"FILE": text_file("not a tensor file")}),
    Case("data: an npz with pickled objects", ["data=tensors", "model=mlp", "data.path={FILE}"],
         "could not be read as tensors", make={"FILE": arrays(lambda a: a.update(y_val=[{"a": 1}] * 16), ".npz")}),
    Case("data: npz with a negative label", ["data=tensors", "model=mlp", "data.path={FILE}"],
         "y_val holds a negative label", make={"FILE": arrays(lambda a: a["y_val"].__setitem__(0, -3), ".npz")}),
    Case("data: a class only in validation is said", ["data=tensors", "model=mlp", "data.path={ARRAYS}", "task=plan",
                                                     "batch_size=32"],
         "class(es) 3 appear only in y_val", code=0, make={"ARRAYS": arrays(lambda a: a.update(y_train=a["y_train"] % 3))}),
    Case("data: integer inputs are said", ["data=tensors", "model=mlp", "data.path={ARRAYS}", "task=plan", "batch_size=32"],
         "inputs are torch.uint8, used as float without scaling", code=0,
         make={"ARRAYS": arrays(lambda a: a.update(x_train=(a["x_train"].abs() * 50).to(torch.uint8),
                                                     x_val=(a["x_val"].abs() * 50).to(torch.uint8)))}),
    Case("accumulation beyond the data", ["trainer.accumulate=1000"],
         "batch_size=100 x trainer.accumulate=1000 = 100000 samples per step is larger than the training set"),
]




@pytest.fixture(scope="session")
def finished_run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finished") / "run"
    outcome = train_in_process([*FAST, f"hydra.run.dir={folder}"], folder.parent)
    assert outcome.code == 0, outcome.stderr
    return folder


FINISHED_RUN = Path()  # set by the autouse fixture below; the case builders copy it


@pytest.fixture(autouse=True)
def _finished_run(finished_run_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "FINISHED_RUN", finished_run_folder)


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file's SHA-256 and every folder (empty ones too) under `folder`: what "unchanged" means."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def arguments(case: Case, root: Path) -> list[str]:
    substitutions = {key: make(root) for key, make in case.make.items()}
    args = [arg.format(**substitutions) for arg in case.args]
    given = case.default_run_dir or any(arg.startswith(("hydra.run.dir=", "resume=/", "resume='")) for arg in args)
    run_dir = [] if given else [f"hydra.run.dir={root / 'run'}"]
    return [*([] if case.no_fast else FAST), *args, *run_dir]


def check_outcome(case: Case, outcome: Outcome | subprocess.CompletedProcess[str], before: dict[str, str],
                  root: Path) -> None:
    code = outcome.code if isinstance(outcome, Outcome) else outcome.returncode
    assert code == case.code, outcome.stderr
    assert "Traceback" not in outcome.stderr
    if case.code == 0:
        assert case.message in " ".join(outcome.stdout.split())  # rich wraps long lines
        assert not outcome.stderr.strip(), outcome.stderr
    else:
        lines = outcome.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
        assert case.message in lines[0]
    assert fingerprint(root) == before, "nothing that existed may change, and nothing may be left behind"
    assert not (root / "code-ran").exists(), "pickled code must never run"


def test_the_table_is_large_enough() -> None:
    assert len(CASES) > 100


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case: Case, tmp_path: Path) -> None:
    args = arguments(case, tmp_path)
    before = fingerprint(tmp_path)
    check_outcome(case, train_in_process(args, tmp_path), before, tmp_path)


# One of each kind of refusal (in a job, against an earlier run, before Hydra starts): each costs an interpreter start.
SUBPROCESS_CASES = ["config error in a user's folder", "another model into a finished run", "norm=null is refused"]


@pytest.mark.parametrize("name", [pytest.param(SUBPROCESS_CASES[0], marks=pytest.mark.slow), *SUBPROCESS_CASES[1:]])
def test_the_console_script_behaves_the_same(name: str, tmp_path: Path) -> None:
    """The same promise through the real `train` script: its exit code and stderr, not main()'s."""
    case = next(case for case in CASES if case.name == name)
    args = arguments(case, tmp_path)
    before = fingerprint(tmp_path)
    result = subprocess.run([TRAIN, *args], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    check_outcome(case, result, before, tmp_path)


def test_a_claimed_folder_is_refused_and_untouched(tmp_path: Path) -> None:
    """Another process holds the folder (here: this one, through the same claim a run takes)."""
    shutil.copytree(FINISHED_RUN, tmp_path / "busy")
    (tmp_path / "busy" / "summary.json").unlink()  # a run still going: no summary yet
    before = fingerprint(tmp_path)
    with claim(tmp_path / "busy"):
        outcome = train_in_process([*FAST, "resume=auto", f"hydra.run.dir={tmp_path / 'busy'}"], tmp_path)
    assert outcome.code == 2 and outcome.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'busy'} is in use by another train process; wait for it to end, "
        "or choose another folder (hydra.run.dir=...)"]
    assert fingerprint(tmp_path) == before


HOLDER = """
import os, signal, sys, time
from pathlib import Path
from trainer.observe.records import claim
with claim(Path(sys.argv[1])):
    if os.fork() == 0:  # a DataLoader worker: it lingers after its parent dies
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # not the test's pipes, which would wait for it
        os.dup2(null, 2)
        time.sleep(10)
        os._exit(0)
    print("claimed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_forked_child_does_not_keep_a_killed_runs_folder_claimed(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    assert holder.returncode == -signal.SIGKILL and holder.stdout == "claimed\n", holder.stderr
    with claim(tmp_path):  # at once: the child still sleeps, yet holds no claim
        pass


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["resume=auto"]], ids=["fresh", "resume=auto"])
def test_two_processes_never_share_a_run_folder(extra: list[str], tmp_path: Path) -> None:
    """Two `train` started together on one folder: one trains, the other is refused with one line,
    and metrics.jsonl holds every epoch once."""
    command = [TRAIN, "data=synthetic", "epochs=3", "log_every=5", *extra, f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
    results = [(process.wait(timeout=300), process.stderr.read()) for process in processes]  # type: ignore[union-attr]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(stderr for code, stderr in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and ("is in use by another train process" in refused[0]
                                  or "already holds a run" in refused[0]), refused
    epochs = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"kind": "epoch"' in line]
    assert len(epochs) == 3


def test_resume_of_another_folder_leaves_no_empty_run_folder(tmp_path: Path) -> None:
    """`train resume=DIR` continues DIR; the outputs/DATE/TIME/ Hydra made for the command goes again."""
    shutil.copytree(FINISHED_RUN, tmp_path / "done")
    record = fingerprint(tmp_path / "done" / ".hydra")
    outcome = train_in_process([*FAST, "epochs=2", f"resume={tmp_path / 'done'}"], tmp_path)
    assert outcome.code == 0, outcome.stderr
    assert "resuming" in outcome.stdout and sorted(path.name for path in tmp_path.iterdir()) == ["done"]
    assert fingerprint(tmp_path / "done" / ".hydra") == record  # the record of how the run started


@pytest.mark.parametrize("existed", [False, True], ids=["new folder", "the user's empty folder"])
def test_ctrl_c_before_the_run_writes_leaves_no_empty_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 existed: bool) -> None:
    """Ctrl-C in a run's first seconds (torch importing, the data loading): exit 130 and one line, and
    the folder Hydra made for it is removed again; a folder that existed before stays."""
    import trainer.run

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.run, "run", interrupted)
    folder = tmp_path / "run"
    if existed:
        folder.mkdir()
    outcome = train_in_process([*FAST, f"hydra.run.dir={folder}"], tmp_path)
    assert (outcome.code, outcome.stderr) == (130, "interrupted\n")
    assert folder.exists() == existed and (not existed or not any(folder.iterdir()))
