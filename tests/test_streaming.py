"""Data that does not fit in memory: data=imagefolder streamed from disk through a DataLoader
(trainer/data/streamed.py, trainer/data/source.py) trains exactly as the same images held in
memory, resumes mid-epoch exactly, shards by rank under torchrun, and is chosen by the memory budget."""
from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import make_images
from in_process import train_in_process
from test_kill_resume import assert_same_outcome
from PIL import Image
from torch.utils.data import TensorDataset

from trainer.data import DataSplits, imagefolder, streamed
from trainer.data.source import OrderSampler, StreamSource
from trainer.data import spread_sample
from trainer.data.streamed import Streamed, StreamedSplits, stream_reason, streamed_splits
from trainer.engine import checkpoint
from trainer.engine.distributed import Context

# 60 images of 8 x 8: 48 to train on (6 steps of 8 an epoch), 12 to validate; 8 to test.
RUN = ["data=imagefolder", "data.image_size=8", "batch_size=8", "epochs=2", "log_every=2", "device=cpu",
       "deterministic=true", "curves=false", "trainer.threads=1"]
CNN = ["model=cnn", "model.channels=[8,16]"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("images")
    make_images(root / "train", {"cat": 30, "dog": 30}, size=8)
    make_images(root / "test", {"cat": 4, "dog": 4}, size=8)
    return [f"data.path={root / 'train'}", f"data.test_path={root / 'test'}"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    payload, _path, _notices = checkpoint.latest_good(run_dir)
    assert payload is not None
    return payload["model"]


def train(args: list[str], cwd: Path, folder: str) -> dict:
    outcome = train_in_process([*RUN, *args, f"hydra.run.dir={folder}"], cwd)
    assert outcome.code == 0, outcome.stderr
    return json.loads((cwd / folder / "summary.json").read_text())


@pytest.mark.parametrize("reading", [["data.workers=0"], ["data.workers=2", "batch_size=4", "trainer.accumulate=2"]],
                         ids=["in_process", "two_workers_accumulated"])
def test_streamed_images_train_exactly_as_held_in_memory(images: list[str], tmp_path: Path, reading: list[str]) -> None:
    # Augmentation and dropout draw from the global RNG on the device: the loader must not move it.
    tricks = ["augment=shift", "augment.max_shift=2", "augment.flip=true", "regularisation=dropout"]
    held = train([*CNN, *images, *tricks, *reading, "data.in_memory=true"], tmp_path, "held")
    streamed = train([*CNN, *images, *tricks, *reading, "data.in_memory=false"], tmp_path, "streamed")
    assert held["data"]["path"] == "in_memory" and streamed["data"]["path"] == "streaming"
    assert streamed["data"]["workers"] == int(reading[0].split("=")[1]) and streamed["steps"] == 12
    # The same batches in the same order, normalised with the same statistics: bit for bit.
    for key in ("final", "best", "test"):
        assert streamed[key] == held[key], key
    weights, expected = final_weights(tmp_path / "streamed"), final_weights(tmp_path / "held")
    assert all(torch.equal(weights[name], expected[name]) for name in expected)


def _train_killed(kill_at: str, args: list[str], cwd: Path) -> None:
    import killing_train

    killing_train.install(*killing_train.parse(kill_at))
    train_in_process(args, cwd)  # SIGKILLs itself at the point
    os._exit(0)


def train_killed(kill_at: str, args: list[str], cwd: Path) -> int | None:
    """`train ARGS` killed with SIGKILL at KILL_AT (tests/killing_train.py), in a fork of this process
    (a fresh interpreter would spend seconds importing torch); its exit code."""
    child = multiprocessing.get_context("fork").Process(target=_train_killed, args=(kill_at, args, cwd))
    child.start()
    child.join(120)
    return child.exitcode


def test_a_streamed_run_killed_mid_epoch_resumes_exactly(images: list[str], tmp_path: Path) -> None:
    args = [*RUN, *CNN, *images, "data.in_memory=false", "data.workers=0", "checkpoint.every_steps=4",
            "checkpoint.min_interval_s=0"]
    train(args, tmp_path, "full")
    assert train_killed("step:5", [*args, "hydra.run.dir=killed"], tmp_path) == -9
    resumed = train_in_process([*args, "hydra.run.dir=killed", "resume=auto"], tmp_path)
    assert resumed.code == 0, resumed.stderr
    assert "from step 4 (epoch 1)" in resumed.stdout  # batch 4 of epoch 1's 6: mid-epoch
    assert_same_outcome(tmp_path / "full", tmp_path / "killed")


def test_two_ranks_stream_their_shares_of_the_one_process_batch(images: list[str], tmp_path: Path) -> None:
    from ranks import train_ranks
    from test_distributed import assert_same_training

    exact = ["model=mlp", "model.width=32", "norm=none", "sched=constant", "precision=fp32", "data.workers=0"]
    train([*images, *exact, "data.in_memory=true"], tmp_path, "one")
    ranks = train_ranks([*RUN, *images, *exact, "data.in_memory=false", "batch_size=4", "hydra.run.dir=two"], tmp_path)
    assert [rank.code for rank in ranks] == [0, 0], ranks[0].stderr + ranks[1].stderr
    assert_same_training(tmp_path / "one", tmp_path / "two")
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["data"]["path"] == "streaming" and summary["world_size"] == 2


def test_each_rank_samples_its_share_of_the_global_order_from_the_saved_position() -> None:
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    shares = []
    for rank in (0, 1):
        sampler = OrderSampler(Context(rank=rank, world_size=2), accumulate=2)
        sampler.plan(order, start=3, step_batch=8, steps=5)  # steps 3 and 4: order[24:40]
        shares.append(list(sampler))
        assert len(sampler) == 4 and all(len(micro) == 2 for micro in shares[-1])
    for step in range(2):  # per step: rank 0's two micro-batches, then rank 1's, make the step's batch
        got = [index for rank in (0, 1) for micro in shares[rank][2 * step : 2 * step + 2] for index in micro]
        assert got == order[24 + 8 * step : 32 + 8 * step].tolist()


def test_any_map_style_dataset_of_uint8_images_streams() -> None:
    """The contract data=hf and others plug in with: ds[i] -> (uint8 (C, H, W), int label), plus the labels."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (24, 1, 4, 4), dtype=torch.uint8, generator=generator)
    labels = torch.arange(24) % 3
    dataset = TensorDataset(pixels, labels)
    data = streamed_splits(Streamed(dataset, labels), Streamed(dataset, labels).head(6), None, 3, workers=0)
    assert data.input_shape == (1, 4, 4) and data.num_train == 24 and not data.has_test
    expected = pixels.float() / 255
    assert torch.allclose(data.mean.flatten(), expected.mean(dim=(0, 2, 3)))
    source = StreamSource(data, Context(), accumulate=1)
    order = source.start_epoch(torch.arange(24).flip(0), 1, 8, 3)
    (x, y), = source.step(order[8:16])
    assert torch.equal(y, labels.flip(0)[8:16])
    assert torch.allclose(x, (expected.flip(0)[8:16] - data.mean) / data.std)
    x_val, y_val = data.head("val", 100)
    assert len(x_val) == 6 and torch.equal(y_val, labels[:6])


def test_statistics_over_a_sample_span_a_class_sorted_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ImageFolder lists class by class: 40 dark images, then 40 bright ones. A sample of a quarter
    # of the split must see both classes, not the first quarter (all dark).
    rng = np.random.default_rng(0)
    for name, low in (("dark", 0), ("bright", 215)):
        (tmp_path / name).mkdir()
        for i in range(40):
            Image.fromarray(rng.integers(low, low + 41, (4, 4, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    held = imagefolder.build(str(tmp_path), image_size=4, val_path=str(tmp_path), in_memory=True)
    whole = imagefolder.build(str(tmp_path), image_size=4, val_path=str(tmp_path), in_memory=False, workers=0)
    monkeypatch.setattr(streamed, "STATS_BYTES", 20 * 4 * 3 * 4 * 4)  # 20 of the 80 images as float32
    sampled = [imagefolder.build(str(tmp_path), image_size=4, val_path=str(tmp_path), in_memory=False, workers=0)
               for _ in range(2)]
    assert isinstance(held, DataSplits) and isinstance(whole, StreamedSplits)
    # The whole split: the in-memory path's statistics (its standardised inputs have mean 0, std 1).
    assert torch.allclose(held.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(held.x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-5)
    x = torch.stack([whole.train.dataset[i][0] for i in range(80)]).float() / 255
    assert torch.allclose(whole.mean, x.mean(dim=(0, 2, 3), keepdim=True))
    # The sample: close to the whole set's (the first 20 images would give a mean of about 0.08, not 0.5).
    assert torch.allclose(sampled[0].mean, whole.mean, atol=0.02) and torch.allclose(sampled[0].std, whole.std, atol=0.02)
    # Seeded: the same statistics every time (every rank, a resumed run).
    assert torch.equal(sampled[0].mean, sampled[1].mean) and torch.equal(sampled[0].std, sampled[1].std)


def test_the_statistics_sample_is_one_seeded_index_per_equal_stretch() -> None:
    assert spread_sample(5, 5) == spread_sample(5, 9) == [0, 1, 2, 3, 4]
    picked = spread_sample(1000, 10)
    assert picked == spread_sample(1000, 10) and picked != [100 * i for i in range(10)]
    assert [index // 100 for index in picked] == list(range(10))


def test_head_spreads_over_a_class_sorted_split() -> None:
    # ImageFolder lists class by class: the first 6 of 24 samples would all be of class 0.
    pixels = torch.arange(24, dtype=torch.uint8).view(24, 1, 1, 1).expand(24, 1, 2, 2).contiguous()
    labels = torch.arange(24) // 8
    split = Streamed(TensorDataset(pixels, labels), labels)
    data = streamed_splits(split, split, None, 3, workers=0)
    x, y = data.head("val", 6)
    rows = spread_sample(24, 6)
    assert set(y.tolist()) == {0, 1, 2} and torch.equal(y, labels[rows])
    assert torch.allclose(x, data.normalise(pixels[rows]))  # each image with its own label
    again = streamed_splits(split, split, None, 3, workers=0).head("val", 6)  # seeded: every rank, every resume
    assert torch.equal(again[0], x) and torch.equal(again[1], y)


def test_auto_streams_what_does_not_fit_the_budget(images: list[str]) -> None:
    path = images[0].split("=", 1)[1]
    # 60 RGB images of 8 x 8 as float32: 46,080 bytes, 0.044 MiB.
    held = imagefolder.build(path, image_size=8, memory_budget_mb=1)
    streamed = imagefolder.build(path, image_size=8, memory_budget_mb=0.04, workers=0)
    assert isinstance(held, DataSplits) and isinstance(streamed, StreamedSplits)
    assert any("the images need 0.044 MiB in memory, over data.memory_budget_mb=0.04" in n for n in streamed.notices)
    assert torch.equal(streamed.labels("val"), held.y_val) and streamed.num_train == len(held.x_train)
    assert isinstance(imagefolder.build(path, image_size=8, in_memory=True, memory_budget_mb=0.04), DataSplits)


def test_one_rule_says_why_a_data_set_is_streamed() -> None:
    # data=imagefolder and data=hf both ask stream_reason; large sizes are whole MiB, not 2.87e+04.
    assert stream_reason("auto", 28711 * 2**20, 4096) == ("the images need 28711 MiB in memory, "
                                                          "over data.memory_budget_mb=4096")
    assert stream_reason("auto", 2**30, 4096) is None and stream_reason("true", 2**50, 1) is None
    assert stream_reason("false", 1, 4096) == "data.in_memory=false"


@pytest.mark.parametrize(("override", "message"), [
    (["data.in_memory=maybe"], "data.in_memory=maybe is unknown; valid: auto"),
    (["data.workers=-1"], "data.workers=-1 must be an integer >= 0"),
    (["data.memory_budget_mb=0"], "data.memory_budget_mb=0 must be a number of MiB > 0"),
    (["data.in_memory=false", "data.input_scale=2"], "this data set is streamed from disk"),
])
def test_bad_streaming_settings_are_one_line_errors(images: list[str], tmp_path: Path, override: list[str], message: str) -> None:
    outcome = train_in_process([*RUN, *CNN, *images, *override], tmp_path)
    assert outcome.code == 2 and message in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1, outcome.stderr
    assert not (tmp_path / "outputs").exists()
