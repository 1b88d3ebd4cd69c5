"""The batch script of a job: ``train.sbatch`` with the allocation's directives and the
job's overrides filled in.

Every value that reaches the shell is quoted with ``shlex.quote``, so no config value (a run
directory named ``$(rm -rf ~)``, a path with a quote or a newline) can run as code; the
directives carry only values ``SlurmConfig.validate`` admitted.
"""

from __future__ import annotations

import re
import shlex
from importlib import resources

from .config import SlurmConfig

_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


def directives(cfg: SlurmConfig) -> list[str]:
    """The ``#SBATCH`` lines: one task per node under torchrun, one per process under srun."""
    tasks = 1 if cfg.launch == "torchrun" else cfg.procs
    lines = [f"--job-name={cfg.job_name}", f"--nodes={cfg.nodes}",
             f"--ntasks-per-node={tasks}", f"--time={cfg.time}",
             f"--signal=USR1@{cfg.notice_s}", "--requeue", "--open-mode=append"]
    if cfg.gpus_per_node:
        lines.append(f"--gpus-per-node={cfg.gpus_per_node}")
    if cfg.cpus_per_proc:
        per_task = cfg.cpus_per_proc * (cfg.procs if cfg.launch == "torchrun" else 1)
        lines.append(f"--cpus-per-task={per_task}")
    for name in ("partition", "account", "qos"):
        if getattr(cfg, name):
            lines.append(f"--{name}={getattr(cfg, name)}")
    return [f"#SBATCH {line}" for line in [*lines, *cfg.extra]]


def render(cfg: SlurmConfig, *, train_args: list[str], workdir: str, python: str) -> str:
    """The script text; ``train_args`` are the job's overrides as triforge-train takes them."""
    values = {
        "DIRECTIVES": "\n".join(directives(cfg)),
        "WORKDIR": shlex.quote(workdir),
        "PYTHON": shlex.quote(python),
        "LAUNCH": cfg.launch,
        "PROCS_PER_NODE": str(cfg.procs),
        "PORT": str(cfg.port),
        "MAX_REQUEUES": str(cfg.max_requeues),
        "TRAIN_ARGS": " ".join(shlex.quote(a) for a in train_args),
    }
    template = resources.files("triforge.slurm").joinpath("train.sbatch").read_text()
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
