"""task=export: batch norm folded into the layer before it gives the same outputs with fewer layers,
and the inference file loads with weights_only=True."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from trainer.engine.parts import build_parts
from trainer.errors import TrainerError
from trainer.run import run
from trainer.tasks import run_task
from trainer.tasks.export import count_layers, export, fold_batchnorm, load_inference


def scramble_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Running statistics and affine parameters far from their initial 0/1, so folding has work to do."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) * 3 + 0.1)
            module.weight.data.copy_(torch.randn(size, generator=generator))
            module.bias.data.copy_(torch.randn(size, generator=generator))


@pytest.mark.parametrize("model", [["model=cnn1d"], ["model=mlp"], ["model=resnet", "model.depth=1", "model.stages=2"]])
def test_folding_keeps_the_outputs_and_removes_every_batchnorm(make_cfg: Callable[..., DictConfig], model: list[str]) -> None:
    parts = build_parts(make_cfg(*model, "norm=batchnorm"))
    scramble_batchnorm(parts.model, torch.Generator().manual_seed(0))
    original = parts.model.eval()
    folded_model = copy.deepcopy(original)
    folded = fold_batchnorm(folded_model)
    before, after = count_layers(original), count_layers(folded_model)
    assert before["batchnorm"] == len(folded) > 0 and after["batchnorm"] == 0
    assert after["layers"] == before["layers"] - len(folded)
    x = parts.data.x_val
    with torch.no_grad():
        reference, result = original(x), folded_model(x)
    assert torch.allclose(result, reference, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # a conv whose norm was dropped, not folded, would be far off
        unfolded_but_dropped = copy.deepcopy(original)
        for module in unfolded_but_dropped.modules():
            if isinstance(module, nn.Sequential):
                for index, child in enumerate(module):
                    if isinstance(child, nn.modules.batchnorm._BatchNorm):
                        module[index] = nn.Identity()
        assert not torch.allclose(unfolded_but_dropped(x), reference, atol=1e-2)


def test_folding_needs_eval_mode(make_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(build_parts(make_cfg()).model.train())


def test_export_writes_a_weights_only_file_that_matches_the_trained_model(trained_run: Path, tmp_path: Path) -> None:
    result = export(str(trained_run), tmp_path)
    assert len(result["folded"]) == result["before"]["batchnorm"] == 3 and result["after"]["batchnorm"] == 0
    assert result["after"]["layers"] == result["before"]["layers"] - 3
    assert result["max_abs_diff"] < 1e-4 and result["before"]["inference_s"] > 0 < result["after"]["inference_s"]
    payload = torch.load(tmp_path / "inference.pt", weights_only=True)  # plain tensors and containers
    assert payload["folded"] == result["folded"]
    from trainer.engine.trained import load_run

    trained = load_run(str(trained_run), "export")
    exported = load_inference(tmp_path / "inference.pt")
    assert count_layers(exported)["batchnorm"] == 0
    x = trained.data.x_val[:64]
    with torch.no_grad():
        assert torch.allclose(exported(x), trained.model(x), atol=1e-4)


def test_export_without_folding_or_without_batchnorm_exports_as_is(make_cfg: Callable[..., DictConfig],
                                                                   trained_run: Path, tmp_path: Path) -> None:
    unfolded = export(str(trained_run), tmp_path / "unfolded", fold_bn=False)
    assert unfolded["folded"] == [] and unfolded["after"] == {**unfolded["after"], "batchnorm": 3}
    assert unfolded["max_abs_diff"] == 0 and unfolded["notice"] is None
    no_bn = tmp_path / "no_bn"
    run(make_cfg("norm=none"), no_bn)
    result = export(str(no_bn), tmp_path / "export")
    assert result["folded"] == [] and result["notice"].startswith("nothing to fold")
    assert (tmp_path / "export" / "inference.pt").exists()


def test_export_task_through_the_config(make_cfg: Callable[..., DictConfig], trained_run: Path, tmp_path: Path) -> None:
    assert run_task(make_cfg("task=export", f"resume={trained_run}"), tmp_path) == 0
    assert (tmp_path / "inference.pt").exists() and (tmp_path / "export.json").exists()


@pytest.mark.parametrize(("resume", "settings", "message"), [
    (None, {}, "task=export needs resume=RUN_DIR"),
    ("auto", {}, "task=export needs resume=RUN_DIR"),
    ("{empty}", {}, "holds no usable checkpoint"),
    ("{empty}/missing", {}, "does not exist"),
    ("{run}", {"fold_bn": "yes"}, "export.fold_bn=yes must be true or false"),
    ("{run}", {"tolerance": 0}, "export.tolerance=0 must be a number > 0"),
])
def test_export_errors_are_one_line_and_write_nothing(trained_run: Path, tmp_path: Path, resume: str | None,
                                                     settings: dict, message: str) -> None:
    (tmp_path / "empty").mkdir()
    spec = resume.format(empty=tmp_path / "empty", run=trained_run) if resume else resume
    out = tmp_path / "out"
    with pytest.raises(TrainerError, match=message) as error:
        export(spec, out, **settings)
    assert "\n" not in str(error.value) and not out.exists()
