"""Continuing a run from a checkpoint: what a checkpoint holds besides the trainer's own state
(the random states, the config, the precision it trained in), the checks that a config may
continue it, and the checkpoint policy a training run hands the loop."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from omegaconf import DictConfig, OmegaConf

from trainer.config import added_at_default, flatten
from trainer.engine import distributed
from trainer.engine.checkpoint import CheckpointError, Checkpointer
from trainer.engine.loop import Trainer, training_left
from trainer.errors import ConfigError
from trainer.observe.history import parse_record, read_json
from trainer.observe.records import write_lines_atomic
from trainer.tricks.precision import Precision

# Config keys that must match to resume: they shape the model, its data or the optimizer state.
# Anything else (epochs, max_steps, device, logging, checkpoint policy) may change, and so may
# `_target_`, a builder's import address: moving the code changes no experiment.
MUST_MATCH = ("data", "model", "norm", "regularisation", "optim.name", "sched.name", "precision.name",
              "batch_size", "trainer.accumulate", "distill", "teacher_forcing")


def check_resumable(saved: dict[str, Any], cfg: DictConfig) -> None:
    old, new = flatten(saved), flatten(OmegaConf.to_container(cfg, resolve=True))
    added = added_at_default(cfg, old, new)  # keys this checkpoint predates, left at their defaults
    differing = sorted(
        key for key in set(old) | set(new)
        if any(key == m or key.startswith(m + ".") for m in MUST_MATCH) and old.get(key) != new.get(key)
        and not key.endswith("._target_") and key not in added
    )
    if differing:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in differing[:4])
        raise ConfigError(f"cannot resume: the config differs in keys that matter: {shown}; "
                          "resume with the original values (only epochs, max_steps, logging and the like may change)")


# What Trainer.load_state_dict and set_rng_state read from every checkpoint (the rest is optional:
# older checkpoints lack it).
REQUIRED = ("model", "optimizer", "schedule", "scaler", "early_stopping", "train_state", "rng")


def completed_summary(payload: dict[str, Any], cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The summary of the completed run `payload` ends, when continuing it as `cfg` asks would train
    nothing (no more epochs or steps): a job launched again after it finished (resume=auto, as a
    preemptible job is) then leaves the run's record as it is; None where there is more to train,
    or the run did not finish (no summary, or killed after its last checkpoint)."""
    summary = read_json(run_dir / "summary.json")
    state = payload["train_state"]
    if summary is None or summary.get("status") != "completed" or summary.get("steps") != state["step"]:
        return None
    return None if training_left(state["epoch"], state["step"], cfg.epochs, cfg.max_steps) else summary


def load_weights(payload: dict[str, Any], model: nn.Module, spec: str, run_dir: Path) -> None:
    """Load the checkpoint's weights into `model`, before the run writes anything: a checkpoint that
    does not fit (another architecture under the same config, a builder's `_target_` changed, a
    file edited by hand) stops in one line, its run's files untouched, not with a traceback
    after its metrics were already cut back to the checkpoint's step."""
    where = f"resume={spec}: the checkpoint of step {payload['train_state'].get('step')} in {run_dir}"
    if missing := [key for key in REQUIRED if key not in payload]:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}; resume from a checkpoint this trainer wrote")
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise CheckpointError(f"{where} does not fit this model ({detail[:300]}); resume with the model it was "
                              "trained with") from None


def check_not_rewinding(payload: dict[str, Any], spec: str, run_dir: Path) -> None:
    """A checkpoint named by hand (resume=RUN/checkpoints/best.pt, an earlier step) of a run that
    finished after it: continuing would cut the run's metrics back to that step and write its later
    checkpoints and summary over the finished run's. A diverged run may be rewound (to continue it
    with a lower LR, say): what it did after the checkpoint is what went wrong."""
    summary = read_json(run_dir / "summary.json") or {}
    step, status = payload["train_state"].get("step", 0), summary.get("status")
    if status in ("completed", "early_stopped") and isinstance(summary.get("steps"), int) and step < summary["steps"]:
        raise ConfigError(f"resume={spec} is step {step} of {run_dir}, a run that {status.replace('_', ' ')} at step "
                          f"{summary['steps']}: continuing from it would replace the run's later steps; train a new run "
                          f"from its weights (init=pretrained init.path={spec}), or resume={run_dir} to continue from its end")


def check_world_size(saved: int, ranks: distributed.Context) -> None:
    """A run resumes with the number of processes it was trained with: batch_size is per process,
    so another number would change the global batch, and with it the run."""
    if saved == ranks.world_size:
        return
    how = ("with processes=1 and without torchrun" if saved == 1
           else f"with processes={saved} (or torchrun --nproc_per_node={saved}, in all across nodes)")
    raise ConfigError(f"cannot resume: the checkpoint was trained by {saved} process(es), this run has {ranks.world_size}; "
                      f"resume it {how}: batch_size is per process, so another count would change the global batch")


def rng_state(device: torch.device) -> dict[str, Any]:
    """The random states a resumed run needs. Of CUDA's, only the generator of the device in use:
    a checkpoint then resumes on the CPU, or where fewer GPUs are visible."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": _python_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _python_state() -> tuple[int, torch.Tensor, float | None]:
    """`random.getstate()` with its 625 words as one tensor: pickled as a single object, not 625
    (the checkpoint writer's pickling holds the GIL the training thread needs)."""
    version, words, gauss = random.getstate()
    return version, torch.tensor(words, dtype=torch.int64), gauss


def _python_state_from(saved: tuple[Any, ...]) -> tuple[Any, ...]:
    """`random.setstate`'s argument from `_python_state` (or an older checkpoint's plain tuple)."""
    version, words, gauss = saved
    return version, tuple(words.tolist()) if isinstance(words, torch.Tensor) else words, gauss


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`'s states; a CUDA state only onto a CUDA device (a GPU checkpoint resumed
    on the CPU has no use for it, a CPU one on a GPU has none: that generator starts from the seed)."""
    random.setstate(_python_state_from(state["python"]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type != "cuda" or cuda is None:
        return
    if isinstance(cuda, list):  # an older checkpoint: every visible GPU's state; ours is the one in use
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def precision_change(saved: str | None, precision: Precision, device: torch.device) -> str | None:
    """The one line to print when a checkpoint resumes in another precision than it was trained in
    (precision=auto on another device); None when it does not, or the checkpoint does not say."""
    if saved is None or saved == precision.actual:
        return None
    return (f"precision: the checkpoint was trained in {saved}, this run continues in {precision.actual} "
            f"(precision={precision.requested} on {device.type}), so it will not end exactly as an uninterrupted run")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records written up to the checkpoint's step; the rest is trained again. Half a line
    (a run stopped mid-write: a full disk, a power cut) is dropped, as history.read_metrics skips it."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if (record := parse_record(line)) is not None
            and record.get("step", 0) <= step]
    write_lines_atomic(path, kept)


class RunCheckpoints:
    """The checkpoint policy of a training run: when a checkpoint is due (the `checkpoint:` config
    node, through `checkpointer`), and what it holds: the trainer's state, the random states of
    `device`'s run, and `saved_with`, what the run adds that does not change as it trains (the
    resolved config, to check a resume against; the precision trained in; ...). Under torchrun
    every rank takes the trainer's state (it reads metrics reduced across the ranks), and rank 0
    alone (`writes`) writes the file."""

    def __init__(self, checkpointer: Checkpointer, device: torch.device, saved_with: dict[str, Any],
                 writes: bool = True) -> None:
        self.checkpointer, self.device, self.saved_with, self.writes = checkpointer, device, saved_with, writes

    def due_at_step(self, step: int) -> bool:
        return self.checkpointer.due_at_step(step)

    def due_at_epoch(self, epoch: int) -> bool:
        return self.checkpointer.due_at_epoch(epoch)

    def save(self, trainer: "Trainer", best: bool) -> None:
        state = trainer.state_dict()
        if self.writes:
            payload = {**state, "rng": rng_state(self.device), **self.saved_with}
            self.checkpointer.save(payload, trainer.state.step, best)

    def wait(self) -> None:
        self.checkpointer.wait()
