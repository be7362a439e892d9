"""Each norm's train-mode output matches its definition; factory and groupnorm argument errors;
norm.sync (SyncBatchNorm under DDP)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from in_process import train_in_process
from ranks import call_on_ranks
from torch import nn

from helpers import SMALL
from trainer.engine import distributed
from trainer.errors import ConfigError
from trainer.tricks.norm import NORMS, factory, local_statistics, synchronised, synchronises

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
        ({"name": "layernorm", "sync": True}, "norm.sync=true synchronises batch statistics; norm=layernorm has none"),
    ],
)
def test_factory_rejects_bad_args(args: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        factory(**args)
    assert needle in str(err.value)


# --- norm.sync: batch statistics over every rank's samples -----------------------------------------

def batchnorm_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, C, 3), factory("batchnorm")(C, 2), nn.Flatten(), nn.LazyLinear(4),
                         factory("batchnorm")(4))


def test_sync_turns_every_batchnorm_of_a_ddp_model_into_syncbatchnorm() -> None:
    model = batchnorm_model()
    weights = [id(p) for p in model.parameters()]
    # A model built for 2 CUDA ranks (no GPU is needed to convert it).
    synced, notice = synchronised(model, sync=True, world_size=2, device=torch.device("cuda", 0))
    assert notice is None and synchronises(synced)
    assert [type(m) for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [nn.SyncBatchNorm] * 2
    assert [id(p) for p in synced.parameters()] == weights  # the same parameters: optimizer and checkpoints unchanged
    off, _ = synchronised(batchnorm_model(), sync=False, world_size=2, device=torch.device("cuda", 0))
    assert not synchronises(off)  # off by default


def test_sync_is_refused_on_the_cpu_and_ignored_in_one_process() -> None:
    with pytest.raises(ConfigError) as refused:
        synchronised(batchnorm_model(), sync=True, world_size=2, device=torch.device("cpu"))
    assert str(refused.value) == ("norm.sync=true needs CUDA: PyTorch's SyncBatchNorm does not run on cpu (gloo); "
                                  "leave norm.sync=false with device=cpu")
    model, notice = synchronised(batchnorm_model(), sync=True, world_size=1, device=torch.device("cpu"))
    assert not synchronises(model) and notice == "norm.sync=true: one process already normalises over the whole batch; ignored"


def test_a_single_process_run_says_sync_is_ignored_and_records_it(tmp_path: Path) -> None:
    outcome = train_in_process([*SMALL, "norm=batchnorm", "norm.sync=true", "hydra.run.dir=run"], tmp_path)
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.count("norm.sync=true: one process already normalises over the whole batch; ignored") == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["tricks"]["norm.sync"] is False


def _probe_alone(ranks: distributed.Context) -> str:
    """Rank 0 alone runs a training-mode forward of a synchronised model, as its layer probe does."""
    torch.manual_seed(0)
    x = torch.randn(8, C)
    plain = factory("batchnorm")(C).train()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(factory("batchnorm")(C)).train()
    if not ranks.is_main:
        return "waited for nothing"
    with local_statistics(synced):
        torch.testing.assert_close(synced(x), plain(x))  # this rank's own batch statistics, no collective
    try:
        synced(x)  # outside: a synchronised forward (which on the CPU PyTorch refuses at once, not after a hang)
    except ValueError as error:
        return str(error)
    return "synchronised"


def test_rank_0s_probe_does_not_wait_for_the_other_ranks() -> None:
    rank0, rank1 = call_on_ranks(_probe_alone)
    assert rank0.startswith("SyncBatchNorm expected input tensor to be on GPU") and rank1 == "waited for nothing"
