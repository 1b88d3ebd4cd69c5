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
    dist.init_process_group(
        backend=backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
