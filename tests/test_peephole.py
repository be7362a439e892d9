"""model.peephole=true: an LSTM whose gates see the cell state (Gers et al.), checked against the
gate equations on a hand-computed step; peephole=false is PyTorch's nn.LSTM, unchanged."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from trainer.data.timing import build as build_timing
from trainer.engine.parts import build_parts
from trainer.errors import ConfigError
from trainer.models.peephole import PeepholeLSTM


def test_one_step_matches_the_gate_equations_computed_by_hand() -> None:
    cell = PeepholeLSTM(1, 1)
    with torch.no_grad():
        cell.weight_ih_l0.copy_(torch.tensor([[0.1], [0.2], [0.3], [0.4]]))  # gate order i, f, g, o
        cell.weight_hh_l0.copy_(torch.tensor([[0.5], [-0.5], [1.0], [-1.0]]))
        cell.bias_ih_l0.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
        cell.bias_hh_l0.zero_()
        cell.peephole_l0.copy_(torch.tensor([[0.3], [-0.2], [0.5]]))  # p_i, p_f, p_o
    x, h0, c0 = torch.tensor([[[1.0]]]), torch.tensor([[[0.5]]]), torch.tensor([[[2.0]]])
    out, (h1, c1) = cell(x, (h0, c0))
    # By hand, x = 1, h0 = 0.5, c0 = 2:
    #   i  = sigmoid(0.1 + 0.5*0.5 + 0.3*2)           = sigmoid(0.95)   = 0.721115
    #   f  = sigmoid(0.2 - 0.5*0.5 + 1 - 0.2*2)       = sigmoid(0.55)   = 0.634136
    #   g  = tanh(0.3 + 1.0*0.5)                      = tanh(0.8)       = 0.664037
    #   c1 = f*c0 + i*g = 1.268271 + 0.478847                           = 1.747118
    #   o  = sigmoid(0.4 - 1.0*0.5 + 0.5*c1)  (peeks at the new cell)    = sigmoid(0.773559) = 0.684290
    #   h1 = o * tanh(c1) = 0.684290 * 0.941047                         = 0.643949
    assert c1.item() == pytest.approx(1.747118, abs=1e-6)
    assert h1.item() == pytest.approx(0.643949, abs=1e-6) and out.item() == h1.item()
    with torch.no_grad():  # without the peepholes the same weights give a different cell
        cell.peephole_l0.zero_()
    assert cell(x, (h0, c0))[1][1].item() != pytest.approx(1.747118, abs=1e-3)


def test_with_zero_peepholes_it_is_pytorchs_lstm() -> None:
    torch.manual_seed(0)
    cell = PeepholeLSTM(3, 5, num_layers=2)
    reference = nn.LSTM(3, 5, num_layers=2, batch_first=True)
    reference.load_state_dict({k: v for k, v in cell.state_dict().items() if not k.startswith("peephole")})
    x, state = torch.randn(4, 7, 3), (torch.randn(2, 4, 5), torch.randn(2, 4, 5))
    for ours, theirs in zip(cell(x, state), reference(x, state)):
        ours, theirs = (ours, theirs) if isinstance(ours, torch.Tensor) else (torch.cat(ours), torch.cat(theirs))
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_the_switch_builds_our_cell_only_when_asked(make_cfg: Callable[..., DictConfig]) -> None:
    plain = build_parts(make_cfg("model=rnn", "model.hidden=8", "init=xavier")).model
    assert type(plain.rnn) is nn.LSTM  # peephole=false: PyTorch's (cuDNN) LSTM, as before
    peephole = build_parts(make_cfg("model=rnn", "model.hidden=8", "model.peephole=true", "init=xavier")).model
    assert type(peephole.rnn) is PeepholeLSTM
    assert set(peephole.state_dict()) == set(plain.state_dict()) | {"rnn.peephole_l0"}
    assert torch.all(peephole.rnn.bias_ih_l0[8:16] == 1)  # init's forget-gate bias reaches our cell too
    with pytest.raises(ConfigError, match="model.peephole=true needs model.cell=lstm"):
        build_parts(make_cfg("model=rnn", "model.cell=gru", "model.peephole=true"))


def test_the_peepholes_get_gradients_from_the_loss() -> None:
    """They start at 0 (the plain LSTM) and must be able to move away from it."""
    torch.manual_seed(0)
    cell = PeepholeLSTM(1, 8)
    data = build_timing(seq_len=12, min_delay=2, num_classes=4, num_train=32, num_val=1)
    out, _ = cell(data.x_train.transpose(1, 2))
    nn.functional.cross_entropy(out[:, -1, :4], data.y_train).backward()
    assert cell.peephole_l0.grad is not None and (cell.peephole_l0.grad.abs() > 0).all()


def test_timing_labels_are_the_delay_between_the_spikes() -> None:
    data = build_timing(seq_len=20, min_delay=3, num_classes=5, num_train=50, num_val=10)
    assert data.input_shape == (1, 20) and data.num_outputs == 5 and len(data.x_test) == 500
    for x, label in zip(torch.cat([data.x_train, data.x_test]), torch.cat([data.y_train, data.y_test])):
        spikes = torch.nonzero(x[0]).flatten().tolist()
        assert len(spikes) == 2 and spikes[1] == 19 and spikes[1] - spikes[0] == label.item() + 3
    with pytest.raises(ConfigError, match="data.seq_len=10 must exceed the longest delay"):
        build_timing(seq_len=10, min_delay=3, num_classes=8)
