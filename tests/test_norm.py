"""Each norm's train-mode output matches its definition; factory and groupnorm argument errors."""
from __future__ import annotations

import pytest
import torch

from trainer.errors import ConfigError
from trainer.tricks.norm import NORMS, factory

C = 32
SHAPES = {0: (16, C), 1: (16, C, 10), 2: (16, C, 5, 6)}  # spatial_dims -> (N, C, *positions)
TOL = {"atol": 1e-3, "rtol": 0}  # eps = 1e-5 against unit variance shifts the result by ~1e-5


def normed(name: str, spatial_dims: int, **kw: float) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = 3 * torch.randn(SHAPES[spatial_dims]) + 2  # away from zero mean, unit variance
    layer = factory(name, **kw)(C, spatial_dims).train()
    return x, layer(x)


@pytest.mark.parametrize("spatial_dims", SHAPES)
def test_batchnorm_per_channel_over_batch_and_positions(spatial_dims: int) -> None:
    _, y = normed("batchnorm", spatial_dims)
    per_channel = y.movedim(1, 0).reshape(C, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(C), **TOL)
    torch.testing.assert_close(per_channel.var(1, unbiased=False), torch.ones(C), **TOL)


@pytest.mark.parametrize("spatial_dims", SHAPES)
def test_layernorm_per_sample_and_position_over_channels(spatial_dims: int) -> None:
    _, y = normed("layernorm", spatial_dims)
    torch.testing.assert_close(y.mean(1), torch.zeros_like(y[:, 0]), **TOL)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones_like(y[:, 0]), **TOL)


@pytest.mark.parametrize("spatial_dims", SHAPES)
def test_rmsnorm_unit_root_mean_square_over_channels(spatial_dims: int) -> None:
    x, y = normed("rmsnorm", spatial_dims)
    torch.testing.assert_close(y.square().mean(1).sqrt(), torch.ones_like(y[:, 0]), **TOL)
    # A rescaling only: no mean is subtracted, so the sign pattern survives.
    assert torch.equal(y.sign(), x.sign())


@pytest.mark.parametrize("spatial_dims", SHAPES)
def test_groupnorm_per_sample_per_group(spatial_dims: int) -> None:
    _, y = normed("groupnorm", spatial_dims, groups=4)
    per_group = y.reshape(y.shape[0], 4, -1)  # channels are contiguous within a group
    torch.testing.assert_close(per_group.mean(2), torch.zeros(y.shape[0], 4), **TOL)
    torch.testing.assert_close(per_group.var(2, unbiased=False), torch.ones(y.shape[0], 4), **TOL)


@pytest.mark.parametrize("spatial_dims", SHAPES)
def test_none_is_identity(spatial_dims: int) -> None:
    x, y = normed("none", spatial_dims)
    assert torch.equal(x, y)


@pytest.mark.parametrize("name", NORMS)
def test_only_batchnorm_cancels_bias(name: str) -> None:
    assert factory(name).cancels_bias == (name == "batchnorm")


def test_groupnorm_non_dividing_width() -> None:
    with pytest.raises(ConfigError, match="norm.groups=8 .* width 12"):
        factory("groupnorm", groups=8)(12, 1)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"name": "instancenorm"}, "'instancenorm' is unknown; valid: none, batchnorm"),
        ({"name": "layernorm", "eps": 0.0}, "norm.eps=0.0"),
        ({"name": "groupnorm", "groups": 0}, "norm.groups=0"),
    ],
)
def test_factory_rejects_bad_args(args: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        factory(**args)
    assert needle in str(err.value)
