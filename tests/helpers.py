"""What several test files share: where the config folder is, the choices of a group, and the
overrides that shrink a run to seconds. Imported as `from helpers import ...` (conftest.py keeps
only fixtures)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import trainer.sweep.jobs  # noqa: F401 - registers the resolvers conf/config.yaml's hydra.sweep names (as the CLI does)
from trainer.config import config_root, group_choices  # noqa: F401 - every choice of a group, read from conf/

CONF_DIR = str(config_root())
GROUPS_DIR = Path(CONF_DIR)

# A tiny, fast, learnable task and a couple of steps: enough to exercise every code path. Without
# curves.png, which took 90% of such a run's time (tests/test_curves.py draws it, and
# test_smoke.py checks that a run writes it by default).
SMALL = ["data=synthetic", "epochs=1", "max_steps=3", "batch_size=32", "log_every=1", "device=cpu", "curves=false",
         "checkpoint.min_interval_s=0"]  # every checkpoint due is written: tests count them



def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as the module `name` (registered in sys.modules: dataclasses look their module
    up there, and one script may import another)."""
    path = Path(__file__).parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
