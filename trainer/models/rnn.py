"""Recurrent classifier: an (C, L) input is read as L steps of C features by an LSTM (optionally
with peepholes), GRU or plain (Elman) RNN; the last step's output -> norm -> dropout -> linear head."""
from __future__ import annotations

import torch
from torch import nn

from trainer.errors import ConfigError
from trainer.models import check_args, check_at_least, dropout_layers
from trainer.models.peephole import PeepholeLSTM
from trainer.tricks.norm import NormFactory

CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RecurrentNet(nn.Module):
    """`rnn` over the sequence, then `post` (norm, dropout) and `head` on the last step."""

    def __init__(
        self,
        input_dropout: nn.Sequential,
        rnn: nn.RNNBase,
        post: nn.Sequential,
        head: nn.Linear,
        activation: str,
    ) -> None:
        super().__init__()
        self.input_dropout = input_dropout
        self.rnn = rnn
        self.post = post
        self.head = head
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.input_dropout(x).transpose(1, 2))  # (N, C, L) -> (N, L, C)
        return self.head(self.post(out[:, -1]))

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


def build(
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    norm: NormFactory,
    dropout: float,
    input_dropout: float,
    activation: str,
    cell: str = "lstm",
    hidden: int = 128,
    layers: int = 1,
    peephole: bool = False,
) -> RecurrentNet:
    """Args: cell: lstm, gru or rnn; hidden: state size; layers: stacked recurrent layers;
    peephole: for the LSTM, connections from the cell state to its gates (Gers et al.; models/peephole.py).

    The only hidden non-linearity is inside the cell, so `activation` names it and is what init
    uses for the recurrent weights' gain: LSTM and GRU cells are fixed to tanh (their sigmoid
    gates aside), so only "tanh" is accepted; the plain RNN takes "tanh" or "relu"
    (nn.RNN's two nonlinearities).
    """
    check_args("rnn", input_shape, num_outputs, dropout, input_dropout)
    if cell not in CELLS:
        raise ConfigError(f"model.cell={cell!r} is unknown; valid: {', '.join(CELLS)}")
    valid = ("tanh", "relu") if cell == "rnn" else ("tanh",)
    if activation not in valid:
        raise ConfigError(
            f"model.activation={activation!r} is not available with model.cell={cell}; "
            f"valid: {', '.join(valid)}"
        )
    if peephole and cell != "lstm":
        raise ConfigError(f"model.peephole=true needs model.cell=lstm (peepholes look into an LSTM's cell); got model.cell={cell}")
    check_at_least("model.hidden", hidden, 1)
    check_at_least("model.layers", layers, 1)
    # Between stacked layers `dropout` also applies (non-recurrent connections only, Zaremba et al. 2014).
    options = {"nonlinearity": activation} if cell == "rnn" else {}
    between = dropout if layers > 1 else 0.0
    if peephole:
        rnn: nn.RNNBase = PeepholeLSTM(input_shape[0], hidden, layers, dropout=between)
    else:
        rnn = CELLS[cell](input_shape[0], hidden, layers, batch_first=True, dropout=between, **options)
    post = nn.Sequential(norm(hidden, 0), *dropout_layers(dropout))
    head = nn.Linear(hidden, num_outputs)
    return RecurrentNet(nn.Sequential(*dropout_layers(input_dropout)), rnn, post, head, activation)
