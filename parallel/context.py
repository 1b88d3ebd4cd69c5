"""What the trainer needs to know about the layout: ranks, groups and reductions.

The trainer never touches meshes directly; it asks this object to sum over data-parallel
ranks, to synchronize, or for the loss context tensor parallelism requires.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from .dims import ParallelDims


@dataclass(frozen=True)
class ParallelContext:
    dims: ParallelDims
    mesh: DeviceMesh | None = None
    dp_mesh: DeviceMesh | None = None
    rank: int = 0

    @classmethod
    def single(cls) -> ParallelContext:
        return cls(ParallelDims(1, 1, 1, 1, 1, 1))

    @property
    def is_main(self) -> bool:
        """The rank that writes shared files and prints (global rank 0)."""
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        return self.dp_mesh.get_local_rank() if self.dims.dp > 1 else 0

    def all_reduce_dp(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over data-parallel ranks in place (no-op without data parallelism)."""
        if self.dims.dp > 1:
            dist.all_reduce(tensor, group=self.dp_mesh.get_group())
        return tensor

    def all_reduce_pp(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the pipeline stages of this rank's pipeline (in place)."""
        if self.dims.pp > 1:
            dist.all_reduce(tensor, group=self.mesh["pp"].get_group())
        return tensor

    def min_over_world(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise minimum over every rank of every mesh dimension (in place): decisions
        that all ranks must share, e.g. whether a step is skipped."""
        if dist.is_initialized() and self.dims.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def loss_context(self):
        """Tensor parallelism keeps logits sharded over the vocabulary; cross entropy on them
        (forward and backward) must run under ``loss_parallel``."""
        if self.dims.tp > 1:
            from torch.distributed.tensor.parallel import loss_parallel

            return loss_parallel()
        return contextlib.nullcontext()


def to_local_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a (replicated) DTensor result, e.g. a loss-parallel loss."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
