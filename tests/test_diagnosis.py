"""diagnose: each pathology fires on a scripted history, a healthy history gives no findings, and
real runs made to fail (huge LR, tiny LR, a big model on 32 samples) are diagnosed correctly."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from helpers import load_script

from trainer.observe.diagnosis import apply_suggestion, command, command_lines, diagnose, diagnose_file, panel, to_dicts, with_commands



def history(train: list[float], val: list[float], acc: list[float] | None = None, lr: float = 1e-3,
            steps_per_epoch: int = 10) -> list[dict[str, Any]]:
    return [{"kind": "epoch", "epoch": i + 1, "step": (i + 1) * steps_per_epoch, "train_loss": t, "val_loss": v,
             "val_acc": acc[i] if acc else None, "lr": lr, "grad_norm": 1.0} for i, (t, v) in enumerate(zip(train, val))]


def step_lines(losses: list[float], lr: float = 1e-3, grad_norm: float = 1.0, **extra: Any) -> list[dict[str, Any]]:
    return [{"kind": "step", "epoch": 1, "step": i + 1, "train_loss": loss, "lr": lr, "grad_norm": grad_norm, **extra}
            for i, loss in enumerate(losses)]


# The parts of a run's config the diagnosis reads (the defaults, with adamw's LR).
CONFIG: dict[str, Any] = {"optim": {"name": "adamw", "lr": 0.01}, "sched": {"name": "cosine_warmup", "warmup_steps": None,
                          "warmup_fraction": 0.05}, "norm": {"name": "batchnorm"}, "init": {"name": "default"},
                          "model": {"name": "mlp", "activation": "relu", "width": 64}, "augment": {"name": "none"},
                          "regularisation": {"name": "none"}, "early_stopping": {"name": "none"}, "clipping": {"name": "none"},
                          "batch_size": 32, "data": {"label_noise": 0.0}}
HEALTHY_TRAIN = [1.2, 0.7, 0.45, 0.33, 0.27, 0.23, 0.21, 0.2]
HEALTHY_VAL = [1.1, 0.75, 0.5, 0.4, 0.36, 0.34, 0.335, 0.333]
HEALTHY_ACC = [0.55, 0.7, 0.8, 0.85, 0.87, 0.88, 0.885, 0.887]
HEALTHY_STEPS = [1.4 * 0.9 ** i + 0.05 * (-1) ** i for i in range(40)]  # noisy but falling


def kinds(findings: list[Any]) -> list[str]:
    return [finding.kind for finding in findings]


def test_healthy_history_has_no_findings() -> None:
    layers = [{"name": "body.3", "kind": "ReLU", "dead_fraction": 0.1}]
    steps = step_lines(HEALTHY_STEPS, clipped_fraction=0.3)
    assert diagnose(history(HEALTHY_TRAIN, HEALTHY_VAL, HEALTHY_ACC), steps, layers) == []
    assert diagnose([], []) == []  # nothing logged yet: nothing to say
    assert diagnose(history([1.4], [1.4]), step_lines([1.40, 1.395, 1.40])) == []  # a flat 3-step smoke run


def test_overfitting_names_the_epoch_it_began() -> None:
    train = [1.0, 0.6, 0.4, 0.25, 0.15, 0.08, 0.04, 0.02]
    val = [1.0, 0.7, 0.55, 0.5, 0.56, 0.62, 0.7, 0.8]
    findings = diagnose(history(train, val, [0.6] * 8), [])
    assert kinds(findings) == ["overfitting"]
    assert findings[0].evidence["began_epoch"] == 4
    assert findings[0].suggestions == ["regularisation=dropout", "early_stopping=val_loss"]
    # With the run's config: augmentation first (more data attacks the cause), then the regularisers.
    with_config = diagnose(history(train, val, [0.6] * 8), [], config=CONFIG)
    assert with_config[0].suggestions == ["augment=shift", "regularisation=dropout", "early_stopping=val_loss"]
    # Two evaluations above the minimum are within noise; so is a rise of under 5%.
    assert diagnose(history(train[:6], val[:6]), []) == []
    assert diagnose(history(train, [1.0, 0.7, 0.55, 0.5, 0.51, 0.51, 0.52, 0.52]), []) == []


def test_a_tiny_rise_of_a_converged_run_is_not_overfitting() -> None:
    # The validation loss more than doubles (1.1e-5 -> 2.6e-5), yet by 1.5e-5, nothing next to the
    # fresh model's loss: every prediction is as right as at the minimum.
    train = [2.3, 0.5, 0.05, 1e-3, 1e-4, 1e-5, 5e-6, 2e-6]
    val = [2.3, 0.5, 0.05, 1e-3, 1.1e-5, 1.5e-5, 2e-5, 2.6e-5]
    assert diagnose(history(train, val, [1.0] * 8), []) == []
    # Converged by the first epoch: the start line's initial loss gives the scale.
    start = {"task": "classification", "initial_loss": 2.3, "chance_loss": 2.3, "num_outputs": 10}
    assert diagnose(history(train[3:], val[3:], [1.0] * 5), [], start=start) == []
    # The same shape at the loss's own scale is overfitting.
    assert kinds(diagnose(history(train, [2.3, 0.5, 0.3, 0.2, 0.11, 0.15, 0.2, 0.26], [0.9] * 8), [])) == ["overfitting"]


def test_underfitting() -> None:
    findings = diagnose(history([1.40, 1.20, 1.05, 0.95, 0.9], [1.4, 1.2, 1.1, 1.0, 0.95], [0.3, 0.4, 0.45, 0.5, 0.5]), [])
    assert kinds(findings) == ["underfitting"]
    assert findings[0].suggestion == "epochs=10"
    # The same loss ratio with a high accuracy: the loss just started low.
    assert diagnose(history([0.2, 0.18, 0.16, 0.15], [0.2] * 4, [0.95] * 4), []) == []


def test_divergence_non_finite_rising_or_by_status() -> None:
    steps = step_lines([1.4, 3.0, 40.0, None], lr=10.0)  # null: how metrics.jsonl writes a nan loss
    findings = diagnose(history([math.nan], [math.nan]), steps, status="diverged")
    assert kinds(findings) == ["divergence"]
    assert findings[0].evidence["first_non_finite_step"] == 4
    assert findings[0].suggestions == ["optim.lr=1", "clipping=norm", "task=lr_find"]

    rising = diagnose([], step_lines([1.4, 1.6, 2.5, 3.5, 4.0, 5.0], lr=0.5))
    assert kinds(rising) == ["divergence"] and "rose from 1.4" in rising[0].message
    assert kinds(diagnose([], step_lines([1.4, 1.3]), status="diverged")) == ["divergence"]


def test_oscillation() -> None:
    findings = diagnose([], step_lines([1.4, 3.0, 0.9, 2.8, 0.8, 3.1, 1.0, 2.5, 0.7, 2.9], lr=0.3))
    assert kinds(findings) == ["oscillation"]
    assert findings[0].suggestions == ["optim.lr=0.1", "clipping=norm", "task=lr_find"]
    # Near-zero single-batch losses jump by large factors but tiny amounts: not oscillation.
    assert diagnose([], step_lines([1.4, 0.5, 0.01, 0.2, 0.001, 0.3, 0.002, 0.25, 0.001, 0.2])) == []


def test_stall_from_a_tiny_lr_or_vanishing_gradients() -> None:
    flat = [1.386, 1.385, 1.387, 1.386, 1.385, 1.386]
    findings = diagnose(history(flat, flat, [0.25] * 6, lr=1e-7), step_lines(flat, lr=1e-7, grad_norm=0.5),
                        config=CONFIG)
    assert kinds(findings) == ["stall"] and "too low" in findings[0].message
    assert findings[0].suggestions == ["optim.lr=0.001", "task=lr_find"]  # adamw's known-stable LR
    vanishing = diagnose(history(flat, flat, lr=1e-3), step_lines(flat, grad_norm=1e-6))
    assert kinds(vanishing) == ["vanishing_gradients"]
    assert vanishing[0].suggestions == ["norm=batchnorm", "init=he"]
    # Flat after falling to under half its start: converged, not stalled.
    assert diagnose(history([0.2] * 4, [0.25] * 4, [0.95] * 4), step_lines([1.4, 0.2, 0.2, 0.2])) == []


def test_dead_units_and_clipping_every_step() -> None:
    layers = [{"kind": "layers", "epoch": 1, "step": 5, "layers": [{"name": "body.3", "kind": "ReLU", "dead_fraction": 0.9}]},
              {"kind": "layers", "epoch": 2, "step": 10, "layers": [
                  {"name": "body.3", "kind": "ReLU", "dead_fraction": 0.8},
                  {"name": "body.6", "kind": "ReLU", "dead_fraction": 0.3},
                  {"name": "body.4", "kind": "Linear", "dead_fraction": None}]}]
    findings = diagnose([], step_lines(HEALTHY_STEPS, grad_norm=5.0, clipped_fraction=0.97), layers)
    assert kinds(findings) == ["clipping", "dead_units"]
    assert findings[1].evidence["layers"] == {"body.3": 0.8}  # the last evaluation's
    assert findings[0].suggestions == ["clipping.max_norm=5", "clipping=none"]
    assert findings[1].suggestions[0] == "model.activation=leaky_relu"


def test_findings_serialise_and_render() -> None:
    findings = diagnose(history([math.nan], [math.inf]), step_lines([1.0, math.inf]), status="diverged")
    text = json.dumps(to_dicts(findings), allow_nan=False)  # summary.json has no NaN
    assert json.loads(text)[0]["kind"] == "divergence"
    console = Console(record=True, width=140)
    console.print(panel(findings))
    console.print(panel([]))
    out = console.export_text()
    assert "divergence" in out and "clipping=norm" in out and "no problems found" in out


def start_line(initial: float = 2.31, chance: float = 2.30, mean: float = 0.0, std: float = 1.0,
               classes: int = 10) -> dict[str, Any]:
    return {"kind": "start", "epoch": 0, "step": 0, "task": "classification", "num_outputs": classes,
            "input_mean": mean, "input_std": std, "chance_loss": chance, "initial_loss": initial, "train_samples": 512}


def config(**changes: Any) -> dict[str, Any]:
    """CONFIG with dotted keys changed: config(**{"optim.lr": 1.0})."""
    cfg = json.loads(json.dumps(CONFIG))
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def test_healthy_history_with_start_and_config_has_no_findings() -> None:
    falling = [2.3 * 0.85 ** i for i in range(20)]
    assert diagnose(history(HEALTHY_TRAIN, HEALTHY_VAL, [0.6, 0.8, 0.9, 0.93, 0.94, 0.95, 0.95, 0.95]),
                    step_lines(falling), start=start_line(), config=CONFIG) == []


def test_inputs_not_standardised_are_named_with_their_mean_and_std() -> None:
    for mean, std in ((0.0, 1000.0), (100.0, 1.0), (0.0, 1e-3)):
        findings = diagnose([], [], start=start_line(initial=120.0, mean=mean, std=std), config=CONFIG)
        assert kinds(findings) == ["inputs"]  # the huge first loss is the inputs' doing, not the init's
        assert findings[0].evidence["input_mean"] == mean and findings[0].evidence["input_std"] == std
        assert findings[0].suggestions == ["data.standardise=true"]
    assert diagnose([], [], start=start_line(mean=0.45, std=0.25), config=CONFIG) == []  # raw [0, 1] pixels are fine


def test_init_whose_fresh_model_starts_far_above_chance() -> None:
    layers = [{"kind": "layers", "epoch": 0, "step": 0, "layers": [
        {"name": "body.1", "kind": "Linear", "act_std": 6.0, "grad_norm": 1.0},
        {"name": "body.4", "kind": "Linear", "act_std": 9000.0, "grad_norm": 1.0}]}]
    findings = diagnose([], [], layers, start=start_line(initial=9190.0), config=config(**{"init.name": "normal"}))
    assert kinds(findings) == ["init"]
    assert findings[0].evidence["initial_loss"] == 9190.0 and findings[0].evidence["last_layer_act_std"] == 9000.0
    assert findings[0].suggestions[0] == "init=he"
    tanh = diagnose([], [], start=start_line(initial=50.0), config=config(**{"model.activation": "tanh"}))
    assert tanh[0].suggestions[0] == "init=xavier"
    assert diagnose([], [], start=start_line(initial=2.5), config=CONFIG) == []  # within 3x of chance


def test_labels_that_do_not_match_the_inputs() -> None:
    train = [2.4, 2.1, 1.9, 1.7, 1.6]
    findings = diagnose(history(train, [2.4, 2.5, 2.6, 2.7, 2.8], [0.10, 0.09, 0.11, 0.10, 0.08]), [],
                        start=start_line(), config=config(**{"data.label_noise": 1.0}))
    assert kinds(findings) == ["labels"]  # not also overfitting: wrong labels explain the rising val loss
    assert findings[0].evidence["best_val_acc"] == 0.11 and findings[0].evidence["chance_acc"] == 0.1
    assert findings[0].suggestions[0] == "data.label_noise=0"
    unplanted = diagnose(history(train, [2.4] * 5, [0.1] * 5), [], start=start_line(), config=CONFIG)
    assert unplanted[0].suggestions == ["early_stopping=val_loss regularisation=label_smoothing"]
    # Validation at chance but the training loss not falling either: not the labels (a stall, if anything).
    assert "labels" not in kinds(diagnose(history([2.3] * 5, [2.3] * 5, [0.1] * 5), [], start=start_line(), config=CONFIG))


def test_batchnorm_with_a_tiny_batch() -> None:
    findings = diagnose(history(HEALTHY_TRAIN, HEALTHY_VAL, HEALTHY_ACC), [], config=config(batch_size=2))
    assert kinds(findings) == ["batchnorm_batch"] and findings[0].evidence["batch_size"] == 2
    assert findings[0].suggestions == ["norm=layernorm", "batch_size=32"]
    assert diagnose(history(HEALTHY_TRAIN, HEALTHY_VAL, HEALTHY_ACC), [],
                    config=config(batch_size=2, **{"norm.name": "layernorm"})) == []


def test_an_early_loss_spike_is_missing_warmup_or_an_lr_too_high() -> None:
    spiking = [2.3, 9.0, 4.0, 2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6, 0.55]
    no_warmup = config(**{"sched.name": "constant", "optim.lr": 0.008})
    findings = diagnose([], step_lines(spiking, lr=0.008), start=start_line(), config=no_warmup)
    assert kinds(findings) == ["warmup"]
    assert findings[0].evidence["peak_loss"] == 9.0 and findings[0].evidence["peak_lr"] == 0.008
    assert findings[0].suggestions == ["sched=cosine_warmup", "optim.lr=0.0027"]
    # At 100x Adam's usual LR warmup cannot make it usable: the lower LR comes first.
    far_too_high = config(**{"sched.name": "constant", "optim.lr": 0.3})
    assert diagnose([], step_lines(spiking, lr=0.3), start=start_line(), config=far_too_high)[0].suggestions == [
        "optim.lr=0.001", "sched=cosine_warmup"]
    with_warmup = diagnose([], step_lines(spiking, lr=1.0), start=start_line(), config=config(**{"optim.lr": 1.0}))
    assert kinds(with_warmup) == ["lr_too_high"]
    assert with_warmup[0].suggestions == ["optim.lr=0.001", "clipping=norm", "task=lr_find"]


def test_divergence_in_the_first_epoch_keeps_its_evidence() -> None:
    diverged = {"kind": "diverged", "epoch": 1, "step": 3, "lr": 50.0, "losses_before": [2.3, 40.0],
                "grad_norms_before": [2.1, 3000.0], "interval_loss": None}
    findings = diagnose([], [], status="diverged", start=start_line(), diverged=diverged,
                        config=config(**{"optim.name": "sgd", "optim.lr": 50.0, "sched.name": "constant"}))
    assert kinds(findings) == ["divergence"]
    evidence = findings[0].evidence
    assert evidence["first_loss"] == 2.31 and evidence["last_finite_loss"] == 40.0 and evidence["peak_lr"] == 50.0
    assert evidence["first_non_finite_step"] == 3 and evidence["grad_norms_before"] == [2.1, 3000.0]
    assert evidence["configured_lr"] == 50.0
    assert findings[0].suggestions == ["optim.lr=0.1", "sched=cosine_warmup", "clipping=norm", "task=lr_find"]
    assert "step 3" in findings[0].message and "3e+03" in findings[0].message


def test_vanishing_gradients_from_the_fresh_models_layers() -> None:
    flat = [2.303, 2.302, 2.303, 2.302, 2.302, 2.302]
    layers = [{"kind": "layers", "epoch": 0, "step": 0, "layers": [
        {"name": "body.1", "kind": "Linear", "grad_norm": 1e-6}, {"name": "head", "kind": "Linear", "grad_norm": 0.2}]}]
    findings = diagnose(history(flat, flat, [0.1] * 6), step_lines(flat, grad_norm=0.2), layers, start=start_line(),
                        config=config(**{"norm.name": "none"}))
    assert kinds(findings) == ["vanishing_gradients"]
    assert findings[0].evidence["first_to_last_layer_grad_ratio"] == pytest.approx(5e-6)
    assert findings[0].suggestions == ["norm=batchnorm", "init=he"]
    resnet = config(**{"norm.name": "none", "model.residual": False})
    assert diagnose(history(flat, flat), step_lines(flat), layers, config=resnet)[0].suggestions[0] == "model.residual=true"


def test_too_small_levels_off_where_too_few_epochs_still_falls() -> None:
    levelled = [2.3, 2.0, 1.9, 1.85, 1.84, 1.84, 1.84, 1.84, 1.84]
    findings = diagnose(history(levelled[::3], levelled[::3], [0.3] * 3), step_lines(levelled), start=start_line(),
                        config=CONFIG)
    assert kinds(findings) == ["too_small"] and findings[0].suggestions == ["model.width=256", "epochs=6"]
    # Still falling, but through a hidden layer narrower than the 10 outputs: too small all the same.
    bottleneck = diagnose(history([2.4, 2.3, 2.2], [2.4, 2.3, 2.2], [0.15] * 3), step_lines([2.5, 2.4, 2.3, 2.2]),
                          start=start_line(), config=config(**{"model.width": 1}))
    assert kinds(bottleneck) == ["too_small"] and bottleneck[0].evidence["num_outputs"] == 10
    assert bottleneck[0].suggestions[0] == "model.width=4"
    falling = [2.3, 2.2, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6, 1.5]
    findings = diagnose(history(falling[::3], falling[::3], [0.3] * 3), step_lines(falling), start=start_line(),
                        config=CONFIG)
    assert kinds(findings) == ["underfitting"] and findings[0].suggestions[0] == "epochs=6"


def test_commands_are_the_runs_overrides_with_the_fix() -> None:
    overrides = ["init=normal", "init.std=1", "norm=none", "hydra.run.dir=runs/a", "'logger=[tensorboard,csv]'"[1:-1]]
    assert apply_suggestion(overrides, "init=he") == ["norm=none", "logger=[tensorboard,csv]", "init=he"]
    assert apply_suggestion(["optim=sgd", "optim.lr=50"], "optim.lr=0.1") == ["optim=sgd", "optim.lr=0.1"]
    assert apply_suggestion(["data=synthetic", "data.input_scale=1000"], "data.standardise=true") == [
        "data=synthetic", "data.input_scale=1000", "data.standardise=true"]
    assert command(["optim.lr=50", "logger=[tensorboard,csv]"], "optim.lr=0.1 clipping=norm") == (
        "train 'logger=[tensorboard,csv]' optim.lr=0.1 clipping=norm")
    findings = with_commands(diagnose([], [], start=start_line(mean=100.0), config=CONFIG), ["data.input_offset=100"])
    assert findings[0].commands == ["train data.input_offset=100 data.standardise=true"]
    assert command_lines(findings) == ["try (inputs): train data.input_offset=100 data.standardise=true"]


# Real runs made to fail, small enough for seconds each.
def _run(make_cfg: Callable[..., DictConfig], tmp_path: Path, *overrides: str) -> tuple[dict[str, Any], list[Any]]:
    from trainer.run import run

    cfg = make_cfg("data=synthetic", "device=cpu", "log_every=1", "max_steps=null", *overrides, small=False)
    summary = run(cfg, tmp_path / "run")
    config = OmegaConf.to_container(cfg, resolve=True)
    findings = diagnose_file(tmp_path / "run" / "metrics.jsonl", summary["status"], config)
    if "diagnosis" in summary:  # once run() writes it, it must agree
        assert [d["kind"] for d in summary["diagnosis"]] == kinds(findings)
    return summary, findings


def test_real_run_huge_lr_diverges(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    _, findings = _run(make_cfg, tmp_path, "optim=sgd", "optim.lr=1e4", "model=mlp", "epochs=1", "batch_size=64")
    assert "divergence" in kinds(findings)


def test_real_run_tiny_lr_stalls(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    _, findings = _run(make_cfg, tmp_path, "optim.lr=1e-7", "model=mlp", "epochs=4", "batch_size=64")
    assert kinds(findings) == ["stall"]
    assert "too low" in findings[0].message


def test_real_run_big_model_on_32_samples_overfits(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    # 32 noisy samples, a 512-wide MLP, one full batch per epoch: the training loss goes to ~0 by
    # epoch 5 while the validation loss bottoms out around epoch 6 and then climbs for the rest.
    summary, findings = _run(make_cfg, tmp_path, "data.num_train=32", "model=mlp", "model.width=512",
                             "epochs=20", "batch_size=32", "log_every=5")
    assert summary["status"] == "completed"
    assert kinds(findings) == ["overfitting"]
    assert 3 <= findings[0].evidence["began_epoch"] <= 12


# The planted-fault benchmark (scripts/diagnose_bench.py): one case, and all of them (both -m slow;
# the default run has each finding's unit test above).
@pytest.mark.slow  # two runs with their curves.png: seconds even when the machine is quiet
def test_bench_finds_and_fixes_offset_inputs(tmp_path: Path) -> None:
    bench = load_script("diagnose_bench")
    case = next(case for case in bench.FAULTS if case.name == "inputs_offset")
    row = bench.fault_row(dataclasses.replace(case, overrides=(*case.overrides, "epochs=2")), tmp_path)  # seconds
    assert row["found"] and row["findings"][0] == "inputs" and row["suggestion"] == "data.standardise=true"
    assert row["evidence"]["input_mean"] == pytest.approx(100, abs=1)
    assert row["fix_improves"] and row["fixed"] > row["broken"] + bench.ACC_MARGIN


@pytest.mark.slow
def test_bench_every_fault_and_healthy_run(tmp_path: Path) -> None:
    """The benchmark's own promise (the README's table): recall >= 11/12, fix rate >= 10/12 of the
    faults, no finding on a healthy run."""
    bench = load_script("diagnose_bench")
    out = tmp_path / "diagnose.json"
    assert bench.main(["--out", str(out)]) == 0
    totals = json.loads(out.read_text())["totals"]
    assert totals["faults"] >= 12 and totals["healthy"] >= 8
    assert totals["found"] >= totals["faults"] - 1 and totals["fixed"] >= totals["faults"] - 2
    assert totals["false_alarms"] == 0


@pytest.mark.slow
def test_end_to_end_the_printed_command_runs_as_pasted_and_fixes_the_fault(tmp_path: Path) -> None:
    import shlex
    import subprocess
    import sys

    train = str(Path(sys.executable).with_name("train"))
    planted = ["data=synthetic", "data.num_classes=10", "model=mlp", "model.width=64", "norm=none",
               "data.input_scale=1000", "epochs=3", "batch_size=32", "device=cpu", "checkpoint.every_epochs=0"]
    broken = subprocess.run([train, *planted, f"hydra.run.dir={tmp_path / 'broken'}"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert broken.returncode == 0, broken.stderr
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    first = summary["diagnosis"][0]
    assert first["kind"] == "inputs" and first["evidence"]["input_std"] > 500
    line = next(line for line in broken.stdout.splitlines() if line.startswith("try (inputs): "))
    pasted = line.split(": ", 1)[1]
    assert pasted == first["commands"][0] == "train " + " ".join(planted) + " data.standardise=true"
    fixed = subprocess.run([train, *shlex.split(pasted)[1:]], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    [fixed_summary] = [json.loads(p.read_text()) for p in (tmp_path / "outputs").glob("*/*/summary.json")]
    assert fixed_summary["best"]["val_acc"] > summary["best"]["val_acc"] + 0.05
    assert "inputs" not in [f["kind"] for f in fixed_summary["diagnosis"]]
