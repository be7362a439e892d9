"""The tools: lr_find (LR range test, state restored), check_init (vanishing/exploding layers
flagged), plan (errors and warnings without training)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from rich.console import Console

from trainer.engine.parts import build_parts
from trainer.errors import ConfigError
from trainer.tasks import run_task
from trainer.tasks import check_init as check_init_module
from trainer.tasks import lr_find as lr_find_module
from trainer.tasks import plan as plan_module
from trainer.tasks.check_init import check_init
from trainer.tasks.lr_find import lr_find, smooth, suggest
from trainer.tasks.plan import plan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"



def rendered(renderable: Any, width: int = 160) -> str:
    console = Console(record=True, width=width)
    console.print(renderable)
    return console.export_text()


def test_smoothing_is_bias_corrected_and_suggestion_is_steepest_descent() -> None:
    assert smooth([2.0, 2.0, 2.0], 0.98) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0
    lrs = list(np.logspace(-6, 0, 61))
    # A loss that falls fastest (in log LR) at 1e-3, then rises: a tanh step centred there.
    losses = [2.0 - np.tanh(2 * (np.log10(lr) + 3)) + max(np.log10(lr) + 1, 0) * 5 for lr in lrs]
    suggested, method = suggest(lrs, losses)
    assert suggested == pytest.approx(1e-3, rel=0.3) and method.startswith("steepest")
    suggested, method = suggest(lrs[:4], losses[:4])  # too short to differentiate
    assert method == "minimum-loss LR / 10" and suggested == pytest.approx(lrs[3] / 10)


def test_lr_find_suggests_an_lr_and_restores_everything(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    parts = build_parts(make_cfg("model=mlp", "optim=adamw", "regularisation=dropout"))
    model_before = copy.deepcopy(parts.model.state_dict())
    optimizer_before = copy.deepcopy(parts.optimizer.state_dict())
    rng_before = torch.get_rng_state()

    result = lr_find(parts, tmp_path, num_steps=60)

    assert result["stopped_early"]  # adamw at LR 10 diverges well before the end
    assert len(result["lrs"]) == len(result["losses"]) == len(result["raw_losses"]) < 60
    assert result["lrs"][0] == pytest.approx(1e-7)
    assert 1e-5 < result["suggested_lr"] < result["min_loss_lr"]
    assert result["override"] == f"optim.lr={result['suggested_lr']:.2g}"
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == PNG_SIGNATURE
    for key, value in parts.model.state_dict().items():
        assert torch.equal(value, model_before[key]), key
    assert parts.optimizer.state_dict() == optimizer_before  # no moments left, base LR back
    assert all(p.grad is None for p in parts.model.parameters())
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert "suggested LR" in rendered(lr_find_module.render(result))


def test_lr_find_rejects_a_bad_range(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    from trainer.errors import ConfigError

    parts = build_parts(make_cfg("model=mlp"))
    with pytest.raises(ConfigError, match="start_lr=1 and end_lr=0.1"):
        lr_find(parts, tmp_path, start_lr=1, end_lr=0.1)


DEEP_RELU = ("model=mlp", "model.depth=20", "model.width=256", "norm=none", "data=synthetic")


def test_check_init_flags_exploding_layers_for_naive_normal_init(make_cfg: Callable[..., DictConfig],
                                                                  tmp_path: Path) -> None:
    result = check_init(build_parts(make_cfg(*DEEP_RELU, "init=normal")), tmp_path)
    assert not result["ok"]
    flags = {flag for layer in result["flagged"] for flag in layer["flags"]}
    assert "exploding activations" in flags
    deepest = [row for row in result["layers"] if row["kind"] == "ReLU"][-1]
    assert deepest["act_ratio"] > 1e10  # std grows ~sqrt(256/2) = 11x per layer
    assert (tmp_path / "init_check.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "exploding activations" in rendered(check_init_module.render(result))
    narrow = rendered(check_init_module.render(result), width=80)  # a plain terminal, or a log
    assert "…" not in narrow and check_init_module._number(deepest["act_std"]) in narrow  # no number cut short


def test_check_init_flags_nothing_for_he_init(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    parts = build_parts(make_cfg(*DEEP_RELU, "init=he"))
    before = copy.deepcopy(parts.model.state_dict())
    result = check_init(parts, tmp_path)
    assert result["ok"] and result["flagged"] == []
    relu_ratios = [row["act_ratio"] for row in result["layers"] if row["kind"] == "ReLU"]
    assert len(relu_ratios) == 20 and all(0.3 < ratio < 3 for ratio in relu_ratios)
    assert all("activations" not in row for row in result["layers"])  # samples stay out of the result
    assert all(torch.equal(v, before[k]) for k, v in parts.model.state_dict().items())
    assert "no vanishing or exploding layers" in rendered(check_init_module.render(result))


def test_plan_reports_size_and_memory_without_training(make_cfg: Callable[..., DictConfig],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def no_step(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("plan must not train")

    monkeypatch.setattr(torch.optim.AdamW, "step", no_step)
    report = plan(make_cfg("model=mlp", "norm=layernorm", "max_steps=null", "epochs=2"))
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.tricks["model"] == "mlp" and report.params > 0
    assert report.total_steps == 2 * report.steps_per_epoch and report.evaluations == 2
    memory = report.memory
    assert memory["params"] == memory["grads"] == report.params * 4
    assert memory["optimizer"] == 2 * memory["params"]  # AdamW: two moments per parameter
    assert memory["activations"] > 0
    assert memory["total"] == sum(memory[k] for k in ("params", "grads", "optimizer", "activations"))
    assert report.to_dict()["ok"] is True
    assert "memory per step" in rendered(plan_module.render(report))


def test_plan_turns_config_errors_into_errors(make_cfg: Callable[..., DictConfig]) -> None:
    report = plan(make_cfg("norm=batchnorm", "batch_size=1"))
    assert not report.ok and "batch_size=1 with norm=batchnorm" in report.errors[0]
    assert report.params is None and report.tricks["norm"] == "batchnorm"
    report = plan(make_cfg("data=adding", "data.num_train=64", "data.num_val=16", "model=rnn", "norm=none",
                           "early_stopping=val_acc"))
    assert "early_stopping=val_acc needs a classification task" in report.errors[0]
    assert plan_module.error_lines(report) == [f"error: {report.errors[0]}"]
    assert "error" not in rendered(plan_module.render(report))  # errors go to stderr, not into the table


@pytest.mark.parametrize("task", ["lr_find", "check_init"])
def test_fresh_model_tasks_refuse_resume(make_cfg: Callable[..., DictConfig], trained_run: Path, tmp_path: Path,
                                         task: str) -> None:
    # They build the config's fresh model: resume= was accepted and never read.
    with pytest.raises(ConfigError, match=f"task={task} measures the config's freshly initialised model and does "
                                          f"not read resume={trained_run}; leave resume= out"):
        run_task(make_cfg(f"task={task}", f"resume={trained_run}"), tmp_path)
    assert not any(tmp_path.iterdir())
    assert run_task(make_cfg(f"task={task}", "resume=auto"), tmp_path) == 0  # a relaunch's resume=auto: nothing to continue


def test_plan_checks_resume_as_a_run_would(make_cfg: Callable[..., DictConfig], trained_run: Path,
                                           tmp_path: Path) -> None:
    # "Every config error a run would hit is reported here": resume= was not read at all.
    assert plan(make_cfg(f"resume={trained_run}", "max_steps=40")).ok  # more steps: a run may continue
    differs = plan(make_cfg(f"resume={trained_run}", "model.channels=16"))
    assert differs.errors and differs.errors[0].startswith("cannot resume: the config differs in keys that matter: model.channels")
    missing = plan(make_cfg(f"resume={tmp_path / 'gone'}"))
    assert missing.errors == [f"resume={tmp_path / 'gone'} does not exist; give a checkpoint file, a run folder, or auto"]
    assert plan(make_cfg("resume=auto"), tmp_path).ok  # no checkpoint in the run folder: a run starts afresh
    assert not any(tmp_path.iterdir())


def test_plan_warnings(make_cfg: Callable[..., DictConfig]) -> None:
    report = plan(make_cfg("precision=tf32", "early_stopping=val_loss", "sched=plateau", "init=zeros",
                           "batch_size=4", "norm=batchnorm", "max_steps=null", "epochs=2"))
    text = " | ".join(report.warnings)
    assert report.ok
    assert "precision=tf32 needs a CUDA GPU" in text
    assert "early_stopping.patience=5 but the run evaluates only 2 time(s)" in text
    assert "sched=plateau with sched.patience=5 but only 2 evaluation(s)" in text
    assert "early_stopping.patience=5 <= sched.patience=5" in text
    assert "init=zeros" in text and "batch_size=4 with norm=batchnorm" in text
    assert not any("no fused kernel" in warning for warning in report.warnings)  # AdamW under fp32
    rmsprop = plan(make_cfg("precision=fp16", "optim=rmsprop")).warnings
    assert any("precision=fp16 with optim=rmsprop: torch has no fused kernel" in w for w in rmsprop)
    assert not any("no fused kernel" in w for w in plan(make_cfg("precision=fp16", "optim=adamw")).warnings)
    warmup = plan(make_cfg("sched=cosine_warmup", "sched.warmup_fraction=0.8", "max_steps=null"))
    assert any("warmup takes" in warning for warning in warmup.warnings)
    assert any("max_steps=3 ends training before the first epoch" in w for w in plan(make_cfg()).warnings)


def test_every_task_result_marks_its_folder_as_used() -> None:
    """task=NAME writes NAME.json: a folder holding one is never written into again (records.check_unused)."""
    from trainer.observe.records import RUN_FILES
    from trainer.tasks import TASKS

    assert {f"{task}.json" for task in TASKS if task not in ("train", "plan")} <= set(RUN_FILES)
