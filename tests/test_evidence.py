"""The evidence presets (docs/evidence.md) stay runnable: each composes, sweeps 3 seeds where it is
a sweep, and the first configuration of its sweep trains a couple of steps on small data."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from helpers import CONF_DIR
from trainer.run import run

EXPERIMENTS = Path(CONF_DIR) / "experiment"
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem.startswith(("evidence_", "mnist1d_best")))
SINGLE_RUN = {"mnist1d_best", "evidence_char_lm"}  # one run each; `-m ... seed=0,1,2` for the seeds, the LM is probed
# Shrink whatever data set a preset uses: a couple of steps only need a few batches (at least two
# per epoch: with one, cosine_warmup's warmup covers the whole run and trainer/tricks/sched.py divides by zero).
SMALL_DATA = {
    "mnist1d": ["data.num_samples=300"],
    "adding": ["data.num_train=256", "data.num_val=16", "data.seq_len=10"],
    "synthetic": [],
    "timing": ["data.num_train=256", "data.num_val=16"],
    "text": ["data.max_chars=12000"],
    "text_probe": ["data.num_val=16", "data.num_test=16"],
    "seq2seq": ["data.num_train=256", "data.num_val=16", "data.num_test=16"],
}
FEW_STEPS = ["epochs=1", "max_steps=2", "log_every=1", "device=cpu", "checkpoint.every_epochs=0"]


def hydra_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def first_combination(preset: str) -> list[str]:
    """The overrides of the sweep's first job: the first value of every swept key."""
    params = hydra_cfg(f"experiment={preset}").hydra.sweeper.get("params") or {}
    return [f"{key}={str(values).split(',')[0]}" for key, values in params.items()]


def test_there_is_a_preset_per_claim_and_a_recipe() -> None:
    assert len([p for p in PRESETS if p.startswith("evidence_")]) >= 9
    assert {"mnist1d_best", "mnist1d_best_ablation"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes(preset: str) -> None:
    cfg = hydra_cfg(f"experiment={preset}")
    params = cfg.hydra.sweeper.get("params") or {}
    if preset in SINGLE_RUN:
        assert not params  # one run per command; the seeds come from the command line
        return
    assert str(params["seed"]) == "0,1,2"  # mean and spread over 3 seeds
    assert len(params) >= 2  # something varies besides the seed
    assert str(cfg.hydra.sweep.dir).startswith(f"multirun/experiment={preset}-")


# Each preset composes in the default run (above); training one is ~3 s, so only the recipe trains there.
@pytest.mark.parametrize("preset", [p if p == "mnist1d_best" else pytest.param(p, marks=pytest.mark.slow) for p in PRESETS])
def test_first_configuration_trains(preset: str, tmp_path: Path) -> None:
    combination = first_combination(preset)
    composed = hydra_cfg(f"experiment={preset}", *combination)
    data = composed.data.name
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        if composed.distill.name == "soft":  # the preset's teacher is trained by a command it names: stand in a small one
            few_steps_checkpointed = [key for key in FEW_STEPS if not key.startswith("checkpoint.")]
            teacher = compose("config", overrides=[f"data={data}", *SMALL_DATA[data], *few_steps_checkpointed])
            run(teacher, tmp_path / "teacher")
            combination.append(f"distill.teacher={tmp_path / 'teacher'}")
        cfg = compose("config", overrides=[f"experiment={preset}", *combination, *SMALL_DATA[data], *FEW_STEPS])
    summary = run(cfg, tmp_path / "run")
    assert summary["steps"] == 2
    assert summary["status"] in ("completed", "diverged")  # some presets show a divergence on purpose
