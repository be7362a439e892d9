"""A trained run's model, rebuilt from its checkpoint for the tools that inspect it (`task=export`,
`task=tsne`).

The model is rebuilt from the config saved in the checkpoint, not from the command's config: a
bare `train task=tsne resume=RUN_DIR` composes the defaults, which need not be the run's model.
No init runs (the weights come from the checkpoint, and `init=pretrained`'s file may be gone).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from trainer.config import build
from trainer.data import DataSplits
from trainer.data.streamed import StreamedSplits
from trainer.engine import checkpoint
from trainer.engine.parts import build_data, token_inputs
from trainer.errors import ConfigError


@dataclass
class TrainedRun:
    """Args:
        model: the run's model with the checkpoint's weights, on the CPU, in eval mode.
        config: the run's own config, as saved in the checkpoint.
        path: the checkpoint file the weights came from.
        data: the run's data set, as its config builds it (generated or read from the cache).
    """

    model: nn.Module
    config: dict[str, Any]
    path: Path
    data: DataSplits | StreamedSplits


def build_untrained(config: dict[str, Any], input_shape: tuple[int, ...], num_outputs: int,
                    vocab_size: int | None = None) -> nn.Module:
    """The model a saved config names, with fresh (uninitialised-by-us) weights, ready to load a state
    dict (a char_probe's encoder is not copied again: the state dict holds it). `vocab_size`: the
    characters a character model reads (data=text, text_probe)."""
    node = OmegaConf.create(config)
    regularisation = build("regularisation", node.regularisation)
    tokens = {"vocab_size": vocab_size} if vocab_size is not None else {}
    return build("model", node.model, input_shape=tuple(input_shape), num_outputs=num_outputs,
                 norm=build("norm", node.norm), dropout=regularisation.dropout,
                 input_dropout=regularisation.input_dropout, **tokens)


def load_run(resume: str | None, task: str) -> TrainedRun:
    """The latest good checkpoint under `resume` (a run folder, or a checkpoint file such as
    RUN/checkpoints/best.pt), its model rebuilt and loaded; raises a one-line error otherwise."""
    if resume in (None, "", "auto"):
        raise ConfigError(f"task={task} needs resume=RUN_DIR: the folder of a trained run, or one of its checkpoint files")
    payload, path, _ = checkpoint.resolve(str(resume), Path("."))
    assert payload is not None and path is not None  # resolve raises for anything but resume=auto
    config = payload["config"]
    data = build_data(OmegaConf.create(config["data"]))  # with the run's data options, as it trained
    saved_chars = payload.get("chars")
    if saved_chars is not None and data.chars != saved_chars:
        raise ConfigError(f"resume={resume}: the run's text has changed since it trained (its vocabulary differs), "
                          "so its character ids no longer decode")
    tokens = token_inputs(OmegaConf.create(config["model"]), data)
    model = build_untrained(config, data.input_shape, data.num_outputs, **tokens)
    model.load_state_dict(payload["model"])
    return TrainedRun(model=model.eval(), config=config, path=path, data=data)
