"""What is wrong with a `train` command line, said in one line: the checks made before Hydra
composes it (an override that removes what every run needs, two modes at once, a late -m), and
the folding of Hydra's multi-line errors into one line that names what is valid (the options of a
group, the settings of a node, the quoting a value needs)."""
from __future__ import annotations

import re
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import DictConfig

from trainer.config import config_root, group_choices
from trainer.errors import TrainerError

CONF_DIR = str(config_root())
MULTIRUN_FLAGS = ("-m", "--multirun")

UNLEXED = re.compile(r"LexerNoViableAltException: (?P<key>[+~]{0,2}[\w.@/]+)=(?P<value>[^'\s]+) \^")
MISSING_CHOICE = re.compile(r"Could not load '(?P<group>\w+)/[^']*'\.?$")


def one_line(error: BaseException) -> str:
    """Hydra's messages span several lines ("Could not find 'norm/foo' ... Available options: ...");
    fold them into one. The system's OSError: its reason and the path it names (Hydra's missing
    config is an OSError too)."""
    if isinstance(error, OSError) and not isinstance(error, HydraException):
        return f"{error.strerror or error}: {error.filename or ''}".rstrip(": ")
    text = str(error).strip().split("Config search path")[0] or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head, rest = lines[0], lines[1:]
    if rest and rest[0].startswith("Available options"):
        return f"{head.rstrip('.')}; {rest[0].rstrip(':').lower()}: {', '.join(rest[1:])}"
    folded = re.sub(r"\s+", " ", " ".join(lines))
    missing = MISSING_CHOICE.search(folded)
    if missing and (Path(CONF_DIR) / missing["group"]).is_dir():  # `logger=[csv,bogus]`: Hydra lists no options then
        return f"{folded.rstrip('.')}; available options in '{missing['group']}': {', '.join(group_choices(missing['group']))}"
    unlexed = UNLEXED.search(folded)
    if unlexed:  # a character the override grammar has no token for (sample.prime=café€): quoted, it is plain text
        folded += f" (quote the value: \"{unlexed['key']}='{unlexed['value']}'\")"
    elif "override_grammar" in folded:  # a path with '=' or ',' (a sweep job's folder) reads as more overrides
        folded += " (a value holding '=' or ',' must be quoted: \"hydra.run.dir='multirun/x/norm=none,seed=0'\")"
    return folded


UNKNOWN_KEY = re.compile(r"^Could not override '(?P<key>[\w.]+)'")
# Options that change where Hydra looks for configs: a second composition here would look elsewhere.
PRESETS = ("experiment=", "hparams_search=", "+experiment=", "+hparams_search=")
SEARCH_PATH_OPTIONS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def unknown_key(error: BaseException, args: list[str]) -> str | None:
    """`sched.warmup_step=3`: Hydra says it could not override the key and suggests `+sched.warmup_step=3`,
    which adds a key nothing reads. Name the valid keys of that node instead, read from the config
    the rest of the command composes (a sweep: its first job); None where that cannot be composed
    (another bad override, a search path of the user's, a preset's sweep): Hydra's message then stands."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    match = UNKNOWN_KEY.match(str(error))
    if match is None or any(arg.split("=")[0] in SEARCH_PATH_OPTIONS for arg in args):
        return None
    if set(MULTIRUN_FLAGS) & set(args) and any(arg.startswith(PRESETS) for arg in args):
        return None  # the preset's own sweep (hydra.sweeper.params) may choose another option than this composes
    key = match["key"]
    parent, _, _ = key.rpartition(".")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=_first_job([arg for arg in args if not arg.startswith("-")], key))
    except Exception:  # noqa: BLE001 - whatever stops this composition, Hydra's own message is still true
        return None
    finally:
        GlobalHydra.instance().clear()
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return None
    valid = ", ".join(sorted(str(name) for name in node if name not in ("_target_", "name")))
    if not parent:
        return f"{key} is not a setting; valid top-level keys: {valid}"
    chosen = f" of {parent}={node.name}" if "name" in node and "." not in parent else ""
    return f"{key} is not a setting{chosen}; valid: {valid or 'none, it takes no settings'}"


def _first_job(overrides: list[str], leave_out: str) -> list[str]:
    """A sweep's overrides as its first job has them (`seed=0,1,2` as `seed=0`; a search's interval
    left out), less Hydra's own and the key `leave_out`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if key.startswith("hydra") or key.lstrip("+~") == leave_out:
            continue
        if not override.is_sweep_override():
            job.append(override.input_line)
        elif not override.is_interval_sweep():
            job.append(f"{key}={next(iter(override.sweep_string_iterator()))}")
    return job


# Groups a run may go without: they add to the config when chosen and are null by default.
OPTIONAL_GROUPS = ("experiment", "hparams_search")
OVERRIDE = re.compile(r"^\+{0,2}(?P<remove>~?)(?P<key>[\w.@/]+?)(?:=(?P<value>.*))?$")


def check_removals(overrides: list[str]) -> None:
    """`norm=null`, `~norm`, `~epochs`: an override that takes away a group or a setting every run
    needs. Hydra would stop on them with a traceback deep in its defaults list, or the run would
    with a missing key; say what is missing instead. (`~group.key` of a builder's argument is
    the builder's to report, trainer.config.build.)"""
    conf = Path(CONF_DIR)
    groups = sorted(path.name for path in conf.iterdir() if path.is_dir() and path.name != "hydra")
    for override in overrides:
        match = OVERRIDE.match(override)
        if match is None or match["key"].startswith("hydra"):
            continue
        key, values = match["key"], (match["value"] or "").split(",")
        if key in groups and (match["remove"] or "null" in values):
            options = ", ".join(group_choices(key))
            if key in OPTIONAL_GROUPS:  # Hydra cannot take null for a group on the command line
                raise TrainerError(f"{override}: {key} is off unless chosen; leave {key}= out, or choose one of: {options}")
            raise TrainerError(f"{override} removes the {key} group, which every run needs; choose one of: {options}")
        if match["remove"] and "." not in key:
            raise TrainerError(f"{override} removes {key}, which every run needs; set it ({key}=...) instead")


# Hydra's options that show the composed config instead of running it, as a command's one mode.
SHOW_OPTIONS = ("--cfg", "-c", "--info", "-i")


def check_one_mode(args: list[str]) -> None:
    """`train -m ... --cfg hydra`: Hydra runs one mode a command and would stop with a traceback."""
    shown = next((arg for arg in args if arg.split("=")[0] in SHOW_OPTIONS), None)
    if shown is not None and set(MULTIRUN_FLAGS) & set(args):
        raise TrainerError(f"-m and {shown} do not go together; leave out -m: `train ... {shown} ...` shows "
                           "what every job of the sweep gets")


def multirun_first(args: list[str]) -> list[str]:
    """`train epochs=5 -m seed=0,1,2`: Hydra's argument parser reads the overrides as one run of
    positional arguments, so those after a late -m were 'unrecognized' (a screen of usage). -m
    takes no value: moved to the front, the command means what it says."""
    if not set(MULTIRUN_FLAGS) & set(args):
        return args
    return ["-m", *(arg for arg in args if arg not in MULTIRUN_FLAGS)]
