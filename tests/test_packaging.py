"""The config root is the top-level conf/ in a clone and trainer/conf in a built wheel: both
must find every YAML, `--help` included, and a wheel installed elsewhere must train."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from helpers import CONF_DIR

REPO = Path(__file__).parents[1]


def test_the_wheel_lists_every_package_folder() -> None:
    """pyproject.toml lists its packages (conf/ is mapped in, so they cannot be found by search):
    a new subpackage missing from the list would be missing from the wheel."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(path.parent.relative_to(REPO).parts)
               for root in ("trainer", "hydra_plugins") for path in (REPO / root).rglob("*.py")}
    assert set(setuptools["packages"]) - {"trainer.conf"} == folders
    assert setuptools["package-dir"] == {"trainer.conf": "conf"}


def test_a_clone_reads_the_top_level_conf() -> None:
    assert Path(CONF_DIR) == REPO / "conf" and (REPO / "conf" / "config.yaml").is_file()
    assert not (REPO / "trainer" / "conf").exists()  # one config root, not two that drift apart


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_trains_from_another_folder(tmp_path: Path) -> None:
    """`pip wheel` + install into a new venv + `train` from an unrelated folder: the YAMLs come from
    the installed wheel, not from this checkout. (The venv reaches torch and the other dependencies
    through a .pth file, as no network is needed or wanted; the editable install of this checkout
    is not on its path.)"""
    source = tmp_path / "source"  # a copy: building in place would leave build/ in the checkout
    for folder in ("conf", "trainer", "hydra_plugins"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / file, source / file)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("trainer-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the dependencies' folder holds this checkout's editable install, which
    # pip must neither count as installed nor uninstall.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--ignore-installed",
                    "-q", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import trainer.config as c; print(c.config_root())"], cwd=elsewhere,
                           env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where) == site / "trainer" / "conf"
    train = str(venv / "bin" / "train")
    help_text = subprocess.run([train, "--help"], cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout
    assert "cosine_warmup" in help_text and "batchnorm" in help_text  # read from the installed YAMLs
    result = subprocess.run([train, "data=synthetic", "epochs=1", "max_steps=2", "batch_size=32", "device=cpu",
                             "hydra.run.dir=run"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (elsewhere / "run" / "summary.json").is_file()
    report = subprocess.run([str(venv / "bin" / "train-report"), "--help"], cwd=elsewhere, env=env,
                            capture_output=True, text=True)  # the second console script: trainer.sweep.report:main
    assert report.returncode == 0 and "sweep folder" in report.stdout, report.stderr


def test_hydra_discovers_the_every_choice_sweeper_from_another_folder(tmp_path: Path) -> None:
    """As `train -m experiment=smoke_all` run anywhere: under the README's editable install Hydra's
    plugin listing did not see hydra_plugins/trainer_sweepers (it imported, but was not found)."""
    script = ("import trainer.cli\n"
              "from hydra.core.plugins import Plugins\n"
              "from hydra.plugins.sweeper import Sweeper\n"
              "print(sorted(c.__name__ for c in Plugins.instance().discover(Sweeper)))\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    found = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert "EveryChoiceSweeper" in found.stdout
