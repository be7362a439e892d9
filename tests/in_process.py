"""Run the `train` command in this process, as the console script would, for tests that need many
commands: the interpreter and torch start once, not once per command (about 4 s each here)."""
from __future__ import annotations

import contextlib
import io
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from trainer import cli


@dataclass
class Outcome:
    code: int | str  # the exit code, or "crash" for an exception that escaped main()
    stdout: str
    stderr: str


def train_in_process(args: list[str], cwd: Path) -> Outcome:
    """`train ARGS` run from `cwd`: main() with sys.argv set, stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = ["train", *args]
    os.chdir(cwd)
    code: int | str = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:  # noqa: BLE001 - a crash is what the tests look for
                traceback.print_exc(file=err)
                code = "crash"
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        HydraConfig.instance().cfg = None  # type: ignore[assignment]  # as in a fresh process
    return Outcome(code, out.getvalue(), err.getvalue())
