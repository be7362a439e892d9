"""`hydra/sweeper=every_choice`: one job per choice of every config group, one group at a time.

`train -m experiment=smoke_all` uses it: a job with every group at its default, then, for each
group, one job per other choice with the rest left at the defaults (not the full product, which
would be millions of jobs). The command line's own overrides apply to every job; a choice that
cannot run alone names the overrides it needs in `companions`, and `skip` leaves out whole groups
(`experiment`) or single choices (`data=cifar10`, which downloads).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class EveryChoiceSweeperConf:
    _target_: str = "hydra_plugins.trainer_sweepers.every_choice.EveryChoiceSweeper"
    # Groups (`experiment`) or single choices (`data=cifar10`) left out.
    skip: List[str] = field(default_factory=list)
    # "group=choice": the overrides that choice needs beside it, e.g. model=cnn: [data=synthetic, data.image_size=16].
    companions: Dict[str, List[str]] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="every_choice", node=EveryChoiceSweeperConf,
                             provider="trainer")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def one_group_at_a_time(base: Sequence[str], defaults: Dict[str, str], options: Dict[str, Sequence[str]],
                        skip: Sequence[str], companions: Dict[str, Sequence[str]]) -> List[List[str]]:
    """The jobs' overrides: `base` alone, then base with each non-default, non-skipped choice of
    each group in `options` (and that choice's companions, which replace base's same keys).

    Args:
        base: the command line's overrides, applied to every job.
        defaults: the chosen option of each group (after the command line's overrides).
        options: every option of each group to vary.
    """
    jobs = [list(base)]
    for group, choices in options.items():
        if group in skip:
            continue
        for choice in choices:
            chosen = f"{group}={choice}"
            if choice == defaults.get(group) or chosen in skip:
                continue
            extra = [*companions.get(chosen, []), chosen]
            replaced = {_key(item) for item in extra}
            jobs.append([item for item in base if _key(item) not in replaced] + extra)
    return jobs


class EveryChoiceSweeper(Sweeper):
    def __init__(self, skip: Sequence[str], companions: Dict[str, Sequence[str]]) -> None:
        super().__init__()
        self.skip, self.companions = list(skip), {k: list(v) for k, v in companions.items()}
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Optional[Launcher] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
        swept = [str(item.input_line) for item in parsed if item.is_sweep_override()]
        if swept:
            raise HydraException(f"hydra/sweeper=every_choice varies one group at a time and takes single values; "
                                 f"got {swept[0]}")
        # Every group the defaults list chose an option for; Hydra's own (hydra/...) are not the run's.
        defaults = {group: str(choice) for group, choice in self.config.hydra.runtime.choices.items()
                    if choice is not None and not group.startswith("hydra/")}
        options = {group: loader.get_group_options(group) for group in defaults}
        jobs = one_group_at_a_time(arguments, defaults, options, self.skip, self.companions)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info(f"every_choice: {len(jobs)} jobs, one group varied at a time")
        self.validate_batch_is_legal(jobs)
        results: List[JobReturn] = list(self.launcher.launch(jobs, initial_job_idx=0))
        return [results]
