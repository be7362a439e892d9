"""build_parts(cfg) -> Parts: everything a config names, built and wired, ready to fit.

`run` trains with these parts; the tools (`task=plan`, `lr_find`, `check_init`) use them too,
so every path builds a config the same way.
"""
from __future__ import annotations

import inspect
import math
import os
import random
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer

from trainer.config import build, builder, check_numbers, config_root
from trainer.data import DataSplits
from trainer.data.streamed import StreamedSplits
from trainer.data import options as data_options
from trainer.data.checks import check_splits
from trainer.engine import distributed
from trainer.engine.smoke import slice_data
from trainer.engine.threads import resolve as resolve_threads
from trainer.errors import ConfigError
from trainer.models.char_lm import check_sample_settings
from trainer.models.decoding import Decoding
from trainer.tricks.clipping import Clipping
from trainer.tricks.distill import HardLoss, SoftLoss
from trainer.tricks.early_stopping import SEQUENCE_MONITORS, EarlyStopping, NoEarlyStopping
from trainer.tricks.norm import synchronised
from trainer.tricks.precision import Precision
from trainer.tricks.regularisation import Penalty, Regularisation
from trainer.tricks.sched import Schedule
from trainer.tricks.teacher_forcing import TeacherForcing

DEVICES = ("auto", "cpu", "cuda")
NAN_POLICIES = ("stop", "skip")


def resolve_device(requested: str) -> torch.device:
    if requested not in DEVICES:
        raise ConfigError(f"device={requested!r} is unknown; valid: {', '.join(DEVICES)}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def set_determinism(deterministic: bool, device: torch.device) -> str | None:
    """Deterministic algorithms on or off, and cuDNN's autotuner off or on, for every job: a
    sweep's jobs may share a process and must not inherit the previous job's setting.

    Returns a notice when determinism comes too late for cuBLAS in this process."""
    notice = None
    if deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        # cuBLAS needs a fixed workspace for determinism and reads the setting when it starts,
        # so it is set before this job touches the GPU.
        if torch.cuda.is_initialized():
            notice = ("deterministic=true after CUDA was already used in this process: set "
                      "CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment for deterministic cuBLAS")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(deterministic)
    # The autotuner times conv algorithms once per shape and keeps the fastest; its pick may differ per run.
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    return notice


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Full batches only (the order is reshuffled each epoch, so no sample is left out for long);
    a data set smaller than one batch is one batch."""
    return max(num_train // batch_size, 1)


def _shipped_root() -> tuple[dict[str, object], set[str]]:
    """conf/config.yaml as written, and the groups its defaults list chooses (`experiment`,
    `hparams_search` too, null until chosen). Read from the file, so a key added there needs no
    second list here."""
    root = yaml.safe_load((config_root() / "config.yaml").read_text())
    chosen = {key for entry in root["defaults"] if isinstance(entry, dict) for key in entry}
    return root, {key for key in chosen if " " not in key and "/" not in key}  # not `override hydra/...`


def top_level_keys() -> set[str]:
    """What may stand at the top level of a config: the keys conf/config.yaml sets and the groups."""
    root, groups = _shipped_root()
    return (set(root) | groups) - {"defaults", "hydra"}


def check_setting_nodes(cfg: DictConfig) -> None:
    """The settings config.yaml groups under a name of its own (trainer, checkpoint, export, tsne,
    sample) hold exactly its keys: their readers take them as keyword arguments, so `+export.foo=1`
    or `~checkpoint.keep_last` would otherwise stop the command with a traceback, or be ignored."""
    root, groups = _shipped_root()
    for name, shipped in root.items():
        if not isinstance(shipped, dict) or name in groups or name == "hydra" or not isinstance(cfg.get(name), DictConfig):
            continue
        valid, present = set(shipped), set(cfg[name])
        if unknown := sorted(present - valid):
            raise ConfigError(f"{name}.{unknown[0]} is not a setting; valid: {', '.join(sorted(valid))}")
        if missing := sorted(valid - present):
            raise ConfigError(f"{name}.{missing[0]} is missing: every run reads it; set it ({name}.{missing[0]}=...) "
                              "instead of removing it")


def check_top_level(cfg: DictConfig) -> None:
    """The top-level keys' ranges; each group's builder checks its own keys."""
    valid = top_level_keys()
    unknown = sorted(set(cfg) - valid)
    if unknown:  # `+key=value` adds keys Hydra cannot check: nothing here would read them
        raise ConfigError(f"{unknown[0]} is not a setting; valid top-level keys: {', '.join(sorted(valid))}")
    check_setting_nodes(cfg)
    for key in ("epochs", "batch_size", "log_every", "layer_stats_every", "processes"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]} must be an integer >= 1")
    if cfg.max_steps is not None and (not isinstance(cfg.max_steps, int) or cfg.max_steps < 1):
        raise ConfigError(f"max_steps={cfg.max_steps} must be an integer >= 1, or null")
    if not isinstance(cfg.seed, int):
        raise ConfigError(f"seed={cfg.seed} must be an integer")
    for key in ("deterministic", "smoke", "curves"):
        if not isinstance(cfg.get(key, False), bool):
            raise ConfigError(f"{key}={cfg[key]} must be true or false")
    if cfg.nan_policy not in NAN_POLICIES:
        raise ConfigError(f"nan_policy={cfg.nan_policy!r} is unknown; valid: {', '.join(NAN_POLICIES)}")
    performance = cfg.trainer
    if not isinstance(performance.accumulate, int) or performance.accumulate < 1:
        raise ConfigError(f"trainer.accumulate={performance.accumulate} must be an integer >= 1")
    for key in ("compile", "channels_last"):
        if not isinstance(performance[key], bool):
            raise ConfigError(f"trainer.{key}={performance[key]} must be true or false")
    if cfg.norm.name == "batchnorm" and cfg.batch_size < 2:
        raise ConfigError(
            f"batch_size={cfg.batch_size} with norm=batchnorm: batch statistics need at least 2 samples; "
            "use norm=layernorm or a larger batch"
        )


def layer_stats_every_epochs(every_steps: int, steps_per_epoch: int) -> int:
    """The fewest epochs that hold `every_steps` optimizer steps: the per-layer statistics step costs
    about half a training step (on cnn1d, 1.2 ms against 2.5), so once an epoch it is a percent of a
    35-step epoch's time, and once every 100 steps it is under half a percent."""
    return max(1, math.ceil(every_steps / max(steps_per_epoch, 1)))


@dataclass(frozen=True)
class LoopSettings:
    """What the training loop reads of the config, typed (check_top_level has checked the values).

    Args:
        accumulate: micro-batches of `batch_size` per optimizer step (trainer.accumulate).
        skip_nonfinite: nan_policy=skip (else stop at the first non-finite loss or gradient).
        compile: torch.compile what the step calls (trainer.compile; under torchrun, the DDP wrapper).
        best_metric: the metric that picks best.pt: the early-stopping monitor, else val_loss.
        layer_stats_every_epochs: epochs between per-layer statistics (from layer_stats_every).
    """

    epochs: int
    max_steps: int | None
    batch_size: int
    accumulate: int
    log_every: int
    skip_nonfinite: bool
    compile: bool
    best_metric: str
    layer_stats_every_epochs: int


@dataclass
class Parts:
    """Args:
        model: the module whose state is saved and evaluated.
        net: what the training step calls: `model`, or its torch.compile'd wrapper.
        total_steps: optimizer steps the run plans (epochs x steps per epoch, capped by max_steps).
        settings: the loop's typed settings.
        threads: torch's intra-op threads for this run (trainer.threads).
        distributed: this process's place among the ranks training the run (world size 1 without torchrun).
        notices: one-line explanations of fallbacks (tf32 on a CPU, say) for the user.
        teacher_forcing: sets a sequence decoder's teacher-forcing ratio at every step.
        decoding: how evaluation decodes sequences; None for a model that does not decode.
    """

    cfg: DictConfig
    device: torch.device
    data: DataSplits | StreamedSplits
    model: nn.Module
    net: nn.Module
    optimizer: Optimizer
    schedule: Schedule
    precision: Precision
    clipping: Clipping
    regularisation: Regularisation
    criterion: nn.Module
    loss: HardLoss | SoftLoss
    penalty: Penalty
    early_stopping: EarlyStopping | NoEarlyStopping
    augment: Callable[[torch.Tensor], torch.Tensor]
    steps_per_epoch: int
    total_steps: int
    settings: LoopSettings
    teacher_forcing: TeacherForcing
    decoding: Decoding | None
    threads: int = 1
    notices: list[str] = field(default_factory=list)
    distributed: distributed.Context = field(default_factory=distributed.Context)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_data(node: DictConfig) -> DataSplits | StreamedSplits:
    """The chosen data set, then the options every data set takes (data/options.py)."""
    container = OmegaConf.to_container(node, resolve=True)
    assert isinstance(container, dict)
    builder_keys, options = data_options.split(container)
    data_options.check(options)  # a bad option fails before a data set is generated or read
    return data_options.apply(build("data", OmegaConf.create(builder_keys)), **options)


def token_inputs(model: DictConfig, data: DataSplits | StreamedSplits) -> dict[str, int]:
    """`vocab_size` for a model that reads character ids (data=text, text_probe); a model that cannot
    read them, given such data, is a one-line error."""
    if data.chars is None:
        return {}
    if "vocab_size" not in inspect.signature(builder(str(model._target_))).parameters:
        raise ConfigError(f"model={model.name} cannot read character ids, which this data set gives; "
                          "use model=char_lstm (data=text) or model=char_probe (data=text_probe)")
    return {"vocab_size": len(data.chars)}


# Data sets of token pairs and the models that read them: neither works with anything else.
SEQUENCE_PAIRS = {"seq2seq": "seq2seq"}


def check_sequence_pairing(cfg: DictConfig) -> None:
    data, model = str(cfg.data.name), str(cfg.model.name)
    if data in SEQUENCE_PAIRS and SEQUENCE_PAIRS[data] != model:
        raise ConfigError(f"data={data} gives token sequences for an encoder-decoder; use model={SEQUENCE_PAIRS[data]}")


def build_decoding(cfg: DictConfig, model: nn.Module) -> Decoding | None:
    """The decoding of a model that decodes (models/seq2seq.py); None for any other, which must keep the default."""
    decoding = build("decoding", cfg.decoding)
    if hasattr(model, "decode_step"):
        return decoding
    if decoding.name != "greedy":
        raise ConfigError(f"decoding={decoding.name} decodes sequences: it needs model=seq2seq (model={cfg.model.name} does not decode)")
    if cfg.early_stopping.get("monitor") in SEQUENCE_MONITORS:
        raise ConfigError(f"early_stopping.monitor={cfg.early_stopping.monitor} is measured by decoding sequences: "
                          f"it needs model=seq2seq; use val_loss or val_acc")
    return None


def build_model(cfg: DictConfig, data: DataSplits | StreamedSplits, regularisation: Regularisation) -> nn.Module:
    norm = build("norm", cfg.norm)
    model = build("model", cfg.model, input_shape=data.input_shape, num_outputs=data.num_outputs, norm=norm,
                  dropout=regularisation.dropout, input_dropout=regularisation.input_dropout,
                  **token_inputs(cfg.model, data))
    build("init", cfg.init, model=model)
    # Weights a model copies from a trained run (model=char_probe model.encoder=RUN) come after the init, which would overwrite them.
    load_pretrained = getattr(model, "load_pretrained", None)
    if load_pretrained is not None:
        load_pretrained()
    return model


def build_parts(cfg: DictConfig) -> Parts:
    """Build every part `cfg` names; raises ConfigError / DataError for bad input, before any file is written."""
    check_top_level(cfg)
    check_numbers(cfg)
    ranks = distributed.current()
    if ranks.enabled and cfg.processes not in (1, ranks.world_size):
        raise ConfigError(f"processes={cfg.processes} but torchrun started {ranks.world_size} processes; "
                          "under torchrun leave processes=1 (torchrun decides)")
    device = ranks.device(resolve_device(cfg.device))
    threads = resolve_threads(cfg.trainer.threads)
    torch.set_num_threads(threads)  # for every job: a sweep's jobs may share a process
    determinism_notice = set_determinism(cfg.deterministic, device)  # before anything runs on the device
    check_sequence_pairing(cfg)
    data = build_data(cfg.data)
    if data.char_lm:  # its samples are drawn after the last epoch, where a bad setting would cost the run its summary
        check_sample_settings(**cfg.sample, chars=data.chars)
    # batch_size is per process: under torchrun a step takes batch_size x accumulate samples on each rank.
    check_splits(data, cfg.batch_size, cfg.trainer.accumulate, ranks.world_size)
    effective_batch = cfg.batch_size * cfg.trainer.accumulate * ranks.world_size
    if cfg.get("smoke"):  # after the checks, which read all of it: a NaN anywhere fails a smoke run too
        data = slice_data(data, effective_batch)
    regularisation = build("regularisation", cfg.regularisation)
    criterion = regularisation.criterion(data.task)
    # Before seeding: building the teacher's model draws from torch's RNG, which must not move the student's start.
    loss = build("distill", cfg.distill, criterion=criterion, data=data, device=device)
    # Seed after the data is built, so the model's initial weights depend on the seed alone.
    seed_everything(cfg.seed)
    model = build_model(cfg, data, regularisation).to(device)
    # Before the optimizer and compile see it: SyncBatchNorm layers replace the batch norms (norm.sync).
    model, sync_notice = synchronised(model, cfg.norm.get("sync", False), ranks.world_size, device)
    notices = list(data.notices) + [notice for notice in (determinism_notice, loss.notice, sync_notice) if notice]
    if cfg.trainer.channels_last:
        if len(data.input_shape) == 3:
            # NHWC lets cuDNN use tensor-core convolution kernels without transposes.
            model = model.to(memory_format=torch.channels_last)
        else:
            notices.append("trainer.channels_last=true applies to 2-D images only; ignored for this data")
    net = torch.compile(model) if cfg.trainer.compile else model
    per_epoch = steps_per_epoch(data.num_train, effective_batch)
    total = min(cfg.epochs * per_epoch, cfg.max_steps) if cfg.max_steps else cfg.epochs * per_epoch
    optimizer = build("optim", cfg.optim, model=model)
    schedule = build("sched", cfg.sched, optimizer=optimizer, total_steps=total, steps_per_epoch=per_epoch)
    precision = build("precision", cfg.precision, device=device, model=model, teacher=loss.teacher_model)
    if precision.notice:
        notices.append(precision.notice)
    early_stopping = build("early_stopping", cfg.early_stopping)
    decoding = build_decoding(cfg, model)
    teacher_forcing = build("teacher_forcing", cfg.teacher_forcing, model=model)
    if early_stopping.monitor == "val_acc" and data.task != "classification":
        raise ConfigError(f"early_stopping=val_acc needs a classification task; data={cfg.data.name} is "
                          f"{data.task}: use early_stopping=val_loss")
    # Token ids (data=text, text_probe, seq2seq) are the in-memory data sets' only integer inputs.
    token_ids = isinstance(data, DataSplits) and not data.x_train.is_floating_point()
    augment = build("augment", cfg.augment, input_shape=tuple(data.input_shape), token_ids=token_ids)
    return Parts(
        cfg=cfg, device=device, data=data.to(device), model=model, net=net, optimizer=optimizer,
        schedule=schedule, precision=precision, clipping=build("clipping", cfg.clipping),
        regularisation=regularisation, criterion=criterion, loss=loss,
        penalty=regularisation.penalty(model), early_stopping=early_stopping,
        augment=augment, steps_per_epoch=per_epoch, total_steps=total,
        teacher_forcing=teacher_forcing, decoding=decoding, threads=threads,
        settings=LoopSettings(epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=cfg.batch_size,
                              accumulate=cfg.trainer.accumulate, log_every=cfg.log_every,
                              skip_nonfinite=cfg.nan_policy == "skip", compile=cfg.trainer.compile,
                              best_metric=early_stopping.monitor or "val_loss",
                              layer_stats_every_epochs=layer_stats_every_epochs(cfg.layer_stats_every, per_epoch)),
        notices=notices, distributed=ranks,
    )
