"""Functions run on several gloo ranks in processes of their own (``torch.multiprocessing``).

Each child ends through the launcher's ``leave_distributed``, as ``triforge-train`` does, so
a test that passed cannot fail afterwards on gloo's tear-down race (see launcher/dist.py).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import torch.distributed as dist
import torch.multiprocessing as mp

from triforge.launcher.dist import leave_distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(fn: Callable, world: int, *args) -> None:
    """Run ``fn(rank, world, *args)`` on ``world`` ranks of a fresh gloo process group; an
    exception in any rank fails the caller with that rank's traceback."""
    mp.spawn(_child, args=(fn, world, free_port(), args), nprocs=world, join=True)


def _child(rank: int, fn: Callable, world: int, port: int, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    fn(rank, world, *args)
    leave_distributed(0, all_ranks_done=True)
