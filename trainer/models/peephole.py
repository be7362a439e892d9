"""LSTM with peephole connections (Gers & Schmidhuber 2000; Gers, Schraudolph & Schmidhuber 2002).

In a plain LSTM the gates see the input and the previous output h, never the cell state c itself;
when the output gate is shut, h says nothing about c, so the gates cannot time their opening from
what the cell has accumulated. Peepholes add a diagonal connection from the cell to each gate:

    i_t = sigmoid(W_i x_t + U_i h_{t-1} + p_i * c_{t-1} + b_i)
    f_t = sigmoid(W_f x_t + U_f h_{t-1} + p_f * c_{t-1} + b_f)
    g_t = tanh(W_g x_t + U_g h_{t-1} + b_g)
    c_t = f_t * c_t-1 + i_t * g_t
    o_t = sigmoid(W_o x_t + U_o h_{t-1} + p_o * c_t + b_o)      (the output gate sees the new cell)
    h_t = o_t * tanh(c_t)

cuDNN has no such cell, so this one runs step by step in PyTorch (slower than nn.LSTM). It is an
nn.LSTM subclass with nn.LSTM's parameters, names and gate order (input, forget, cell, output),
plus `peephole_l{k}` of shape (3, hidden) for p_i, p_f, p_o; so the init group (forget-gate bias 1,
orthogonal recurrent blocks) and the per-layer statistics treat it as the LSTM it is. The
peepholes start at 0: at initialisation the cell computes exactly what nn.LSTM computes.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def peephole_step(
    x_part: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight_hh: torch.Tensor, peephole: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the cell. `x_part` is W x_t + b (both biases), shape (N, 4H); returns (h_t, c_t)."""
    i_pre, f_pre, g_pre, o_pre = (x_part + h @ weight_hh.T).chunk(4, dim=1)
    p_i, p_f, p_o = peephole
    i = torch.sigmoid(i_pre + p_i * c)
    f = torch.sigmoid(f_pre + p_f * c)
    c = f * c + i * torch.tanh(g_pre)
    o = torch.sigmoid(o_pre + p_o * c)
    return o * torch.tanh(c), c


class PeepholeLSTM(nn.LSTM):
    """A batch-first, unidirectional, multi-layer LSTM with peepholes; `dropout` between layers as nn.LSTM."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, num_layers, batch_first=True, dropout=dropout)
        for layer in range(num_layers):
            self.register_parameter(f"peephole_l{layer}", nn.Parameter(torch.zeros(3, hidden_size)))

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (N, L, input_size); hx: (h_0, c_0), each (num_layers, N, hidden), zeros if None.
        Returns the last layer's outputs (N, L, hidden) and (h_n, c_n) as nn.LSTM does."""
        batch, hidden = x.shape[0], self.hidden_size
        if hx is None:
            zeros = x.new_zeros(self.num_layers, batch, hidden)
            hx = (zeros, zeros)
        h_last, c_last = [], []
        out = x
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout:
                out = F.dropout(out, self.dropout, self.training)  # non-recurrent connections only
            weight_ih, weight_hh, bias_ih, bias_hh = (getattr(self, f"{name}_l{layer}") for name in
                                                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            x_parts = F.linear(out, weight_ih, bias_ih + bias_hh)  # every step's input term at once
            h, c = hx[0][layer], hx[1][layer]
            steps = []
            for t in range(x_parts.shape[1]):
                h, c = peephole_step(x_parts[:, t], h, c, weight_hh, getattr(self, f"peephole_l{layer}"))
                steps.append(h)
            out = torch.stack(steps, dim=1)
            h_last.append(h)
            c_last.append(c)
        return out, (torch.stack(h_last), torch.stack(c_last))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", peephole=True"
