"""The process environment, read once: torchrun, SLURM, or a plain single process.

This is the only place triforge reads environment variables; everything below receives
values.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


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


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM nodelist: 'node[03-05,07],gpu1' -> 'node03'."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise ValueError(f"cannot parse SLURM_NODELIST '{nodelist}'")
    prefix, _, ranges = head.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def read_env(environ: dict | None = None) -> ProcessEnv:
    """torchrun variables win over SLURM's (torchrun under srun sets both)."""
    env = os.environ if environ is None else environ
    wandb_key = bool(env.get("WANDB_API_KEY"))
    if "RANK" in env and "WORLD_SIZE" in env:
        return ProcessEnv(
            rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source="torchrun", wandb_api_key_set=wandb_key,
            agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
            restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)),
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return ProcessEnv(
            rank=int(env["SLURM_PROCID"]), world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=first_slurm_host(env.get("SLURM_NODELIST", "127.0.0.1")),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source="slurm", wandb_api_key_set=wandb_key,
        )
    return ProcessEnv(wandb_api_key_set=wandb_key)
