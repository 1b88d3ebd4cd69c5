"""Process group set-up and tear-down from the environment the launcher read."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from .env import ProcessEnv


def init_distributed(env: ProcessEnv, device: torch.device, *, timeout_s: int) -> None:
    """Join the job's default process group: NCCL on GPUs, gloo on CPUs.

    A single process (world size 1) gets no process group, so plain runs need no rendezvous.
    """
    if env.world_size == 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    store = _attempt_store(env, timeout)
    dist.init_process_group(
        backend=backend,
        init_method=None if store else f"tcp://{env.master_addr}:{env.master_port}",
        store=store,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )


def _attempt_store(env: ProcessEnv, timeout: datetime.timedelta):
    """Under torchrun the elastic agent hosts the store, and it outlives worker restarts
    (``--max-restarts``). Keys of a dead attempt stay in it: restarted workers would read
    the old ranks' addresses and fail to connect. A prefix per attempt keeps them apart."""
    if not env.agent_store:
        return None
    base = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=False,
                         timeout=timeout)
    return dist.PrefixStore(f"triforge/attempt_{env.restart_count}", base)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
