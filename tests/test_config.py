"""Every YAML of every group composes, names a real builder, and passes it only keys it takes."""
from __future__ import annotations

import inspect
import re
from typing import Callable

import pytest
from omegaconf import DictConfig, OmegaConf

from helpers import GROUPS_DIR, group_choices
from trainer.config import GROUPS, build, builder, choices
from trainer.errors import ConfigError

ALL_CHOICES = [(group, choice) for group in GROUPS for choice in group_choices(group)]


def test_every_group_has_an_off_or_default_choice() -> None:
    off = {"init": "default", "norm": "none", "regularisation": "none", "clipping": "none",
           "precision": "fp32", "early_stopping": "none", "sched": "constant"}
    for group, choice in off.items():
        assert choice in group_choices(group)


@pytest.mark.parametrize("group, choice", ALL_CHOICES)
def test_yaml_matches_its_builder(group: str, choice: str) -> None:
    node = OmegaConf.load(GROUPS_DIR / group / f"{choice}.yaml")
    assert node.name == choice, "name must be the choice, so the summary's tricks are right"
    parameters = inspect.signature(builder(node._target_)).parameters
    keys = set(node) - {"_target_", "name"}
    assert keys <= set(parameters), f"{group}/{choice}.yaml has keys its builder does not take"


@pytest.mark.parametrize("group, choice", ALL_CHOICES)
def test_choice_composes(make_cfg: Callable[..., DictConfig], group: str, choice: str) -> None:
    cfg = make_cfg(f"{group}={choice}")
    assert choices(cfg)[group] == choice


def test_bare_config_defaults(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg(small=False)
    assert choices(cfg) == {
        "data": "mnist1d", "model": "cnn1d", "init": "default", "norm": "batchnorm", "regularisation": "none",
        "optim": "adamw", "sched": "cosine_warmup", "clipping": "none", "precision": "auto", "early_stopping": "none",
        "augment": "none", "distill": "none", "teacher_forcing": "constant", "decoding": "greedy",
    }


def test_fields_combine_by_override(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("regularisation=dropout", "regularisation.l1=1e-5")
    regularisation = build("regularisation", cfg.regularisation)
    assert regularisation.dropout == 0.2 and regularisation.l1 == 1e-5


def test_unknown_key_names_the_valid_ones() -> None:
    node = OmegaConf.create({"_target_": "trainer.tricks.clipping.norm", "name": "norm", "max_nrom": 1.0})
    with pytest.raises(ConfigError, match="clipping.max_nrom is not a setting of clipping=norm; valid: max_norm, norm_type"):
        build("clipping", node)


@pytest.mark.parametrize("overrides, message", [
    (["optim=adamw", "+optim.momentum=0.9"],
     "optim.momentum is not a setting of optim=adamw; valid: betas, decay_norm_and_bias, eps, lr, weight_decay"),
    (["init=he", "+init.std=5"], "init.std is not a setting of init=he; valid: forget_bias, mode, recurrent_orthogonal"),
    (["norm=layernorm", "+norm.groups=4"], "norm.groups is not a setting of norm=layernorm; valid: eps"),
    (["early_stopping=none", "+early_stopping.patience=3"],
     "early_stopping.patience is not a setting of early_stopping=none; valid: none, it takes no settings"),
])
def test_a_setting_of_another_choice_is_refused(make_cfg: Callable[..., DictConfig], overrides: list[str],
                                                message: str) -> None:
    # These builders serve several choices and take all their settings: the one the choice lacks was accepted, and ignored.
    from trainer.engine.parts import build_parts

    with pytest.raises(ConfigError, match=re.escape(message)):
        build_parts(make_cfg(*overrides))


def test_a_choice_with_a_yaml_but_no_code_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The valid names are read from conf/: a YAML added without its code passes the name check, so
    the builder must refuse the name rather than build a stand-in (RMSprop, RMSNorm, untouched weights)."""
    import torch
    import torch.nn as nn

    from trainer.tricks import init, norm, optim

    model = nn.Linear(4, 2)
    monkeypatch.setattr(optim, "OPTIMIZERS", [*optim.OPTIMIZERS, "lion"])
    with pytest.raises(NotImplementedError, match="optim=lion has a YAML"):
        optim.build(model, name="lion", lr=0.1)
    monkeypatch.setattr(norm, "NORMS", [*norm.NORMS, "powernorm"])
    with pytest.raises(NotImplementedError, match="norm=powernorm has a YAML"):
        norm.factory("powernorm")(8)
    monkeypatch.setattr(init, "SCHEMES", [*init.SCHEMES, "fixup"])
    with pytest.raises(NotImplementedError, match="init=fixup has a YAML"):
        init.initialise(model, name="fixup")
    from trainer.tricks import distill, precision

    monkeypatch.setattr(precision, "PRECISIONS", [*precision.PRECISIONS, "fp8"])
    with pytest.raises(NotImplementedError, match="precision=fp8 has a YAML"):
        precision.build("fp8", torch.device("cpu"))
    monkeypatch.setattr(distill, "CHOICES", [*distill.CHOICES, "hard"])
    with pytest.raises(NotImplementedError, match="distill=hard has a YAML"):
        distill.build("hard", nn.CrossEntropyLoss(), None, torch.device("cpu"))  # type: ignore[arg-type]
