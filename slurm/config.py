"""The ``slurm.*`` options of ``triforge-submit``: the allocation, not the training job.

They are kept apart from the job config (``launcher/config.py``) because the job itself never
reads them: they become ``#SBATCH`` directives and the launch line of the batch script.
Values that end up in directives are checked against a strict pattern, since sbatch reads
directives without a shell and a newline in one would start a line of shell code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from triforge.errors import ConfigError
from triforge.launcher.schema import check_overrides

JOB_DIR = "slurm"  # inside the run directory: the script, the logs, the submitted job ids
LAUNCHES = ("torchrun", "srun")
# Directive values: names, numbers and lists of them (partition=gpu,gpu-long; time=1-00:00:00).
_DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9._:,@%+/=-]*")
_EXTRA = re.compile(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9._:,@%+/=-]+)?")
_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}")


@dataclass
class SlurmConfig:
    nodes: int = 1
    gpus_per_node: int = 8
    # Training processes per node; 0 means one per GPU. On a CPU-only cluster set
    # gpus_per_node=0 and this to the number of gloo ranks per node.
    procs_per_node: int = 0
    # CPU cores per training process (data loading, the agent). Under torchrun the node's
    # one task asks for all of them; left to the partition's default (0) it may get one core.
    cpus_per_proc: int = 4
    time: str = "04:00:00"
    partition: str = ""
    account: str = ""
    qos: str = ""
    job_name: str = "triforge"
    # torchrun: one task per node running torchrun (c10d rendezvous on the first node);
    # srun: one task per training process, the launcher reads SLURM_PROCID & co itself.
    launch: str = "torchrun"
    notice_s: int = 120  # --signal=USR1@notice_s: the preemption notice before the time limit
    max_requeues: int = 10  # the job requeues itself at most this often (SLURM_RESTART_COUNT)
    port: int = 29500  # rendezvous port on the first node
    extra: list[str] = field(default_factory=list)  # more directives, e.g. [--exclusive]

    @property
    def procs(self) -> int:
        return self.procs_per_node or self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs

    def validate(self) -> None:
        """Raise ValueError naming the field and the rule."""
        for name in ("nodes", "notice_s", "port"):
            if getattr(self, name) < 1:
                raise ValueError(f"slurm.{name}({getattr(self, name)}) must be >= 1")
        for name in ("gpus_per_node", "procs_per_node", "cpus_per_proc", "max_requeues"):
            if getattr(self, name) < 0:
                raise ValueError(f"slurm.{name}({getattr(self, name)}) must be >= 0")
        if self.procs < 1:
            raise ValueError("slurm.procs_per_node is 0 and so is slurm.gpus_per_node: set "
                             "slurm.procs_per_node to the number of processes per node")
        if self.port > 65535:
            raise ValueError(f"slurm.port({self.port}) must be <= 65535")
        if self.launch not in LAUNCHES:
            raise ValueError(f"slurm.launch='{self.launch}' is not one of {LAUNCHES}")
        if not _TIME.fullmatch(self.time):
            raise ValueError(f"slurm.time='{self.time}' is not a SLURM time such as 04:00:00, "
                             "90 or 2-00:00:00")
        for name in ("partition", "account", "qos", "job_name"):
            value = getattr(self, name)
            if not _DIRECTIVE_VALUE.fullmatch(value):
                raise ValueError(f"slurm.{name}='{value}' may only hold letters, digits and "
                                 "._:,@%+/=- (it becomes an #SBATCH directive)")
        for item in self.extra:
            if not _EXTRA.fullmatch(item):
                raise ValueError(f"slurm.extra item '{item}' is not an sbatch option such as "
                                 "--exclusive or --mem=0 (letters, digits and ._:,@%+/=-)")


@dataclass
class _Root:
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """``slurm.*`` overrides and the job's own overrides, each in their given order."""
    slurm = [a for a in args if a.lstrip("+").startswith("slurm.")]
    return slurm, [a for a in args if a not in slurm]


_TEXT_FIELDS = {f.name for f in fields(SlurmConfig) if f.type in (str, "str")}


def _as_text(override: str) -> str:
    """``slurm.time=4:00:00`` with the value quoted when its field is text: YAML would read
    4:00:00 as the sexagesimal integer 14400, 0123 as 123 and yes as true."""
    key, _, value = override.partition("=")
    if key.removeprefix("slurm.") not in _TEXT_FIELDS or value[:1] in ("'", '"'):
        return override
    return f"{key}='{value.replace(chr(39), chr(39) * 2)}'"


def load_slurm_config(overrides: list[str]) -> SlurmConfig:
    """``SlurmConfig`` from ``slurm.key=value`` overrides; ConfigError (one line) when an
    override names no key, has the wrong type or breaks a rule."""
    try:
        plain = [o.lstrip("+") for o in overrides]
        check_overrides(plain, _Root, presets={})
        schema = OmegaConf.structured(_Root)
        merged = OmegaConf.merge(schema, OmegaConf.from_dotlist([_as_text(o) for o in plain]))
        cfg = OmegaConf.to_object(merged).slurm
        cfg.validate()
    except OmegaConfBaseException as exc:  # a wrong type (also a ValueError: test it first)
        first = str(exc).splitlines()[0].rstrip(".")
        raise ConfigError(f"config: {getattr(exc, 'full_key', 'slurm')}: {first}") from None
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    return cfg
