"""A SLURM job's tasks as torchrun's workers: SLURM's variables translated into torchrun's.

`srun train ...` in a job of N tasks (`sbatch --ntasks-per-node`, `--nodes`), or Hydra's submitit
launcher with `hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml), starts one `train` process
per task, each with SLURM_STEP_ID, SLURM_PROCID, SLURM_STEP_NUM_TASKS (SLURM_NTASKS: the job's),
SLURM_LOCALID and the node list in its environment. `adopt` writes torchrun's RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT from them, so engine/distributed.py joins the tasks into
one process group by the same env:// rendezvous as under torchrun: rank 0 listens on the first
node of the step, on a port derived from the job id (every task computes the same one; a job's
own MASTER_ADDR or MASTER_PORT wins).

torchrun's variables take precedence (`srun torchrun ...` starts its own workers, which carry
them); a step of one task, and a process srun did not start, is a plain run. No torch here: the
CLI reads this before --help.
"""
from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

# What torchrun sets; any one of them present means torchrun (or a launcher like it) decides.
TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# A range of ports above the usual services and below Linux's ephemeral ports (32768 and up):
# two jobs sharing a node collide only when their ids differ by a multiple of its width.
PORT_BASE, PORT_SPAN = 20000, 12000
# The node list of the job step this task belongs to (srun), else the job's (older Slurm: SLURM_NODELIST).
NODELIST_KEYS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, in Slurm's compressed form:
    `node[01-03,07],gpu5` -> node01, `rack[2-3]-n[10-11]` -> rack2-n10, `localhost` -> localhost.
    A bracket holds ranges and single numbers; the first is the lowest, its zero padding kept."""
    group = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())
    if group is None:
        raise ValueError(f"cannot read a host from the SLURM node list {nodelist!r}")
    return re.sub(r"\[([^\]\-,]+)[^\]]*\]", r"\1", group.group(0))


def master_port(job_id: str) -> int:
    """The rendezvous port of job `job_id` (array tasks have job ids of their own)."""
    return PORT_BASE + int(re.sub(r"\D", "", job_id) or 0) % PORT_SPAN


def torchrun_env(environ: MutableMapping[str, str]) -> dict[str, str]:
    """torchrun's variables for this SLURM task; {} when torchrun's are set, outside SLURM, outside
    a job step, or in a step of one task."""
    if any(key in environ for key in TORCHRUN_KEYS) or "SLURM_PROCID" not in environ:
        return {}
    # srun marks each task of a job step; a batch script or an salloc shell, which can hold
    # SLURM_PROCID and the allocation's SLURM_NTASKS too, is one process: joining would wait for
    # tasks that never start.
    if "SLURM_STEP_ID" not in environ:
        return {}
    tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS", "1")  # the step's, else the job's
    if int(tasks) <= 1:
        return {}
    nodelist = next((environ[key] for key in NODELIST_KEYS if environ.get(key)), "localhost")
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": tasks,
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(nodelist),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(master_port(environ.get("SLURM_JOB_ID", "0"))),
    }


def adopt(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Write torchrun's variables for this SLURM task into `environ`; whether this process is one of
    several SLURM tasks training one run."""
    variables = torchrun_env(environ)
    environ.update(variables)
    return bool(variables)
