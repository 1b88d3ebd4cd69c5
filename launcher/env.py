"""The process environment, read once: torchrun, SLURM, or a plain single process.

This is the only place triforge reads environment variables; everything below receives
values. A variable that is set but malformed (``RANK=x``, ``WORLD_SIZE=0``, ``RANK=5`` of
2, an unparsable ``SLURM_NODELIST``) is an ``EnvError`` naming it, before any work.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from triforge.errors import TriforgeError


class EnvError(TriforgeError):
    """A launcher variable (torchrun's or SLURM's) that cannot describe this process."""


@dataclass(frozen=True)
class ProcessEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm
    # torchrun's elastic agent hosts the rendezvous store and restarts failed workers
    agent_store: bool = False
    restart_count: int = 0
    wandb_api_key_set: bool = False
    triton_interpret: bool = False  # TRITON_INTERPRET=1: Triton kernels run on the CPU


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM nodelist: 'node[03-05,07],gpu1' -> 'node03'."""
    head = re.fullmatch(r"([A-Za-z0-9._-]+)(\[([0-9]+)[-0-9,]*\])?(,.*)?", nodelist.strip())
    if head is None:
        raise EnvError(f"SLURM_NODELIST='{nodelist}' is not a node list like 'node[01-04]'")
    prefix, _, first, _ = head.groups()
    return prefix + (first or "")


def _int(env, name: str, default: int | None = None, *, low: int = 0) -> int:
    raw = env.get(name)
    if raw is None and default is not None:
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise EnvError(f"{name}='{raw}' must be an integer; check the launcher's "
                       "environment") from None
    if value < low:
        raise EnvError(f"{name}({value}) must be >= {low}")
    return value


def _layout(rank: int, world: int, local_rank: int, names: tuple[str, str, str]) -> None:
    if not rank < world:
        raise EnvError(f"{names[0]}({rank}) must be < {names[1]}({world})")
    if not local_rank < world:
        raise EnvError(f"{names[2]}({local_rank}) must be < {names[1]}({world})")


def read_env(environ: dict | None = None) -> ProcessEnv:
    """torchrun variables win over SLURM's (torchrun under srun sets both)."""
    env = os.environ if environ is None else environ
    common = {"wandb_api_key_set": bool(env.get("WANDB_API_KEY")),
              "triton_interpret": env.get("TRITON_INTERPRET") == "1"}
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE", low=1)
        local = _int(env, "LOCAL_RANK", 0)
        _layout(rank, world, local, ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        return ProcessEnv(
            rank=rank, world_size=world, local_rank=local,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT", 29500, low=1),
            source="torchrun", agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
            restart_count=_int(env, "TORCHELASTIC_RESTART_COUNT", 0), **common,
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS", low=1)
        local = _int(env, "SLURM_LOCALID", 0)
        _layout(rank, world, local, ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
        return ProcessEnv(
            rank=rank, world_size=world, local_rank=local,
            # The batch script exports the address Slurm has for the first node; without
            # it, the first host name of the node list.
            master_addr=env.get("MASTER_ADDR")
            or first_slurm_host(env.get("SLURM_NODELIST", "127.0.0.1")),
            master_port=_int(env, "MASTER_PORT", 29500, low=1), source="slurm", **common,
        )
    return ProcessEnv(**common)
