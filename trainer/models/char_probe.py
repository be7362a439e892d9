"""`model=char_probe`: a snippet classifier on a char LSTM's hidden states, from scratch or on the
encoder (embedding + LSTM) of a trained char LM run: the transfer claim's classifier.

    ids (N, L) -> embedding -> LSTM -> outputs pooled over the steps -> norm -> [dropout] -> linear head -> (N, classes)

`pool=mean` averages the last layer's outputs over the snippet (every position's state counts),
`pool=last` takes the last step's alone (what the LM predicts the next character from).

`encoder=RUN_DIR` copies the embedding and LSTM weights of that `model=char_lstm` run (its latest
good checkpoint, or the checkpoint file named) after the init group has run, so the init choice
applies only to what is not copied (the head); `freeze=true` keeps the embedding and LSTM fixed
(no gradient, always in eval mode), so only the head learns: a linear probe. The same settings
with `encoder=null` are the same classifier trained from scratch (`freeze=false`), or a linear
probe on a random, untrained LSTM (`freeze=true`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.errors import ConfigError
from trainer.models import check_at_least, check_probability, dropout_layers
from trainer.models.char_lm import check_token_input
from trainer.tricks.norm import NormFactory

ENCODER_PREFIXES = ("embedding.", "rnn.")
POOLS = ("mean", "last")


class CharProbe(nn.Module):
    def __init__(self, embedding: nn.Embedding, rnn: nn.LSTM, post: nn.Sequential, head: nn.Linear,
                 encoder: str | None, freeze: bool, pool: str) -> None:
        super().__init__()
        self.embedding = embedding
        self.rnn = rnn
        self.post = post
        self.head = head
        self.activation = "tanh"
        self.encoder_source = encoder
        self.frozen = freeze
        self.pool = pool
        if freeze:
            for module in (self.embedding, self.rnn):
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> "CharProbe":
        super().train(mode)
        if self.frozen:  # a fixed feature extractor: no dropout between its layers, ever
            self.embedding.eval()
            self.rnn.eval()
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embedding(ids))
        return self.head(self.post(out.mean(dim=1) if self.pool == "mean" else out[:, -1]))

    def load_pretrained(self) -> None:
        """Copy the encoder's weights from the run `encoder` names (called after init: parts.build_model)."""
        if self.encoder_source is None:
            return
        state = encoder_state(self.encoder_source)
        own = {key: value for key, value in self.state_dict().items() if key.startswith(ENCODER_PREFIXES)}
        wrong = [f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}" for key, value in own.items()
                 if key in state and state[key].shape != value.shape]
        missing = sorted(set(own) - set(state))
        if wrong or missing:
            raise ConfigError(f"model.encoder={self.encoder_source} does not fit model=char_probe "
                              f"({(wrong or missing)[0]}): set model.embedding, model.hidden and model.layers "
                              "to the run's")
        self.load_state_dict(state, strict=False)


def encoder_state(source: str) -> dict[str, Any]:
    """The embedding and LSTM weights of a char LM run (folder or checkpoint file)."""
    from trainer.engine import checkpoint

    try:
        payload, _path, _notices = checkpoint.resolve(source, Path("."))
    except checkpoint.CheckpointError as error:
        raise ConfigError(str(error).replace(f"resume={source}", f"model.encoder={source}", 1)) from None
    assert payload is not None
    model = payload["config"]["model"].get("name")
    if model != "char_lstm":
        raise ConfigError(f"model.encoder={source} is a model={model} run; name a model=char_lstm run")
    return {key: value for key, value in payload["model"].items() if key.startswith(ENCODER_PREFIXES)}


def build(*, input_shape: tuple[int, ...], num_outputs: int, norm: NormFactory, dropout: float,
          input_dropout: float, vocab_size: int | None = None, activation: str = "tanh", embedding: int = 64,
          hidden: int = 256, layers: int = 2, encoder: str | None = None, freeze: bool = False,
          pool: str = "mean") -> CharProbe:
    """Args: embedding, hidden, layers: the encoder's sizes (a run's, for `encoder`); encoder: a
    model=char_lstm run folder or checkpoint whose embedding and LSTM are copied; freeze: train the
    head only; pool: mean (the outputs averaged over the snippet) or last (the last step's).
    `vocab_size` comes from the data (its characters); `activation` is the cell's, tanh."""
    if pool not in POOLS:
        raise ConfigError(f"model.pool={pool!r} is unknown; valid: {', '.join(POOLS)}")
    check_token_input("char_probe", input_shape)
    if vocab_size is None:
        raise ConfigError("model=char_probe reads character ids: use data=text_probe")
    if activation != "tanh":
        raise ConfigError(f"model.activation={activation!r} is not available with model=char_probe; valid: tanh")
    for key, value in (("model.embedding", embedding), ("model.hidden", hidden), ("model.layers", layers)):
        check_at_least(key, value, 1)
    check_probability("regularisation.dropout", dropout)
    if input_dropout:
        raise ConfigError("regularisation.input_dropout applies to model=char_lstm, not the probe; set it to 0")
    rnn = nn.LSTM(embedding, hidden, layers, batch_first=True, dropout=dropout if layers > 1 and not freeze else 0.0)
    post = nn.Sequential(norm(hidden, 0), *dropout_layers(dropout))
    return CharProbe(nn.Embedding(vocab_size, embedding), rnn, post, nn.Linear(hidden, num_outputs), encoder, freeze,
                     pool)
