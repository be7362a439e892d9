"""StateSnapshot: the weights and buffers of the last take, restored exactly, whether refreshed in place or read afresh."""
import torch
from torch import nn

from trainer.engine.snapshot import StateSnapshot


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _disturb(model: nn.Module) -> None:
    """Change every parameter and buffer in place, as an optimizer step and a forward do."""
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.add_(1)


def test_restore_brings_back_the_last_take_not_the_first():
    model = _model()
    snapshot = StateSnapshot(model)
    assert not snapshot.taken
    snapshot.take()
    _disturb(model)
    snapshot.take()  # in place, into the first take's copies
    assert snapshot.aliased
    expected = {key: value.clone() for key, value in model.state_dict().items()}
    _disturb(model)
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    snapshot.restore()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_state_dict_of_new_tensors_is_read_afresh_at_every_take():
    model = _model()
    # A hook that hands out copies: the state_dict's tensors are not the model's own.
    model.register_state_dict_post_hook(lambda module, state, prefix, local: state.update(
        {key: value.clone() for key, value in state.items()}))
    snapshot = StateSnapshot(model)
    snapshot.take()
    assert not snapshot.aliased
    _disturb(model)
    snapshot.take()
    expected = {key: value.clone() for key, value in model.state_dict().items()}
    _disturb(model)
    snapshot.restore()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
