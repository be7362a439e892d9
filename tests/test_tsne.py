"""task=tsne: the penultimate layer's features, embedded per perplexity into tsne.png; a perplexity
not below the number of points, a regression run, or a missing scikit-learn are one-line errors."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from trainer.engine.parts import build_parts
from trainer.errors import ConfigError, TrainerError
from trainer.run import run
from trainer.tasks import run_task
from trainer.tasks.tsne import neighbour_agreement, penultimate_features, tsne

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_features_are_what_the_output_layer_receives(make_cfg: Callable[..., DictConfig]) -> None:
    cnn = build_parts(make_cfg()).model.eval()
    x = torch.randn(70, 1, 40)
    with torch.no_grad():
        assert torch.equal(penultimate_features(cnn, x, batch_size=32), cnn.body(x))
    rnn = build_parts(make_cfg("model=rnn", "model.hidden=8")).model.eval()
    with torch.no_grad():
        out, _ = rnn.rnn(x.transpose(1, 2))
        assert torch.allclose(penultimate_features(rnn, x), rnn.post(out[:, -1]))
    assert not rnn.head._forward_pre_hooks  # the hook is gone afterwards


def test_neighbour_agreement_of_separated_and_of_mixed_classes() -> None:
    pytest.importorskip("sklearn")
    labels = np.repeat([0, 1], 20)
    apart = np.concatenate([np.random.default_rng(0).normal(size=(20, 2)), 100 + np.random.default_rng(1).normal(size=(20, 2))])
    assert neighbour_agreement(apart, labels, k=5) == 1.0
    interleaved = np.stack([np.arange(40.0), np.zeros(40)], axis=1)  # classes alternate along a line
    assert neighbour_agreement(interleaved, np.arange(40) % 2, k=1) == 0.0  # the nearest is always the other class


def test_tsne_writes_one_panel_per_perplexity(trained_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    result = tsne(str(trained_run), tmp_path, perplexity=[5, 20], max_points=80)
    assert (tmp_path / "tsne.png").read_bytes()[:8] == PNG_SIGNATURE
    assert result["points"] == 80 and result["feature_dim"] == 160  # cnn1d's 32 channels x 5 positions
    assert [panel["perplexity"] for panel in result["panels"]] == [5, 20]
    assert all(0 <= panel["neighbour_agreement"] <= 1 and panel["kl_divergence"] > 0 for panel in result["panels"])


def test_tsne_task_through_the_config(make_cfg: Callable[..., DictConfig], trained_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    assert run_task(make_cfg("task=tsne", f"resume={trained_run}", "tsne.perplexity=10", "tsne.max_points=40"), tmp_path) == 0
    assert (tmp_path / "tsne.png").exists() and (tmp_path / "tsne.json").exists()


@pytest.mark.parametrize(("settings", "message"), [
    ({"perplexity": 30, "max_points": 30}, r"tsne.perplexity=30 must be below the number of points \(30 "),
    ({"perplexity": [5, 50], "max_points": 40}, r"tsne.perplexity=50 must be below the number of points \(40 "),
    ({"perplexity": 0}, "tsne.perplexity=0 must be a number > 0"),
    ({"perplexity": "many"}, "tsne.perplexity=many must be a number > 0"),
    ({"max_points": 1}, "tsne.max_points=1 must be an integer >= 2"),
])
def test_tsne_bad_settings_are_one_line_errors(trained_run: Path, tmp_path: Path, settings: dict, message: str) -> None:
    pytest.importorskip("sklearn")
    with pytest.raises(ConfigError, match=message) as error:
        tsne(str(trained_run), tmp_path / "out", **settings)
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_tsne_needs_a_classification_run_and_a_run(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    with pytest.raises(ConfigError, match="task=tsne needs resume=RUN_DIR"):
        tsne(None, tmp_path / "out")
    regression = tmp_path / "adding"
    run(make_cfg("data=adding", "data.num_train=64", "data.num_val=32", "data.seq_len=6", "model=rnn", "model.hidden=4"),
        regression)
    with pytest.raises(ConfigError, match="colours the points by class; the run's data=adding is regression"):
        tsne(str(regression), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_without_scikit_learn_the_error_names_the_extra(trained_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails as if not installed
    with pytest.raises(TrainerError, match=r"needs scikit-learn, which is not installed: pip install 'trainer\[tsne\]'"):
        tsne(str(trained_run), tmp_path / "out")
    assert not (tmp_path / "out").exists()
