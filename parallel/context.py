"""What the trainer needs to know about the layout: ranks, groups and reductions.

The trainer never touches meshes directly; it asks this object to sum over data-parallel
ranks, to synchronize, for the loss context tensor parallelism requires, or for a process
group of its own (checkpoint writes).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .dims import ParallelDims
from .mesh import RoleMeshes


@dataclass(frozen=True)
class ParallelContext:
    dims: ParallelDims = field(default_factory=ParallelDims)
    meshes: RoleMeshes | None = None  # None: a single process, no process group
    rank: int = 0

    @classmethod
    def single(cls) -> ParallelContext:
        return cls()

    @property
    def distributed(self) -> bool:
        """Whether this process is one of several ranks of a process group."""
        return self.meshes is not None and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """The rank that writes shared files and prints (global rank 0)."""
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        return self.meshes.dp.get_local_rank() if self.dims.dp > 1 else 0

    @property
    def cp_rank(self) -> int:
        """This rank's place in its context-parallel group: which chunks of each sequence
        it holds (parallel/context_parallel.py)."""
        return self.meshes.cp.get_local_rank() if self.dims.cp > 1 else 0

    def context_shard(self, batch):
        """This rank's tokens of a batch of whole sequences (the batch itself without
        context parallelism)."""
        from .context_parallel import shard_batch

        return shard_batch(batch, self.dims.cp, self.cp_rank)

    @property
    def pp_rank(self) -> int:
        return self.meshes.pp.get_local_rank() if self.dims.pp > 1 else 0

    def all_reduce_loss(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` in place over the ranks whose losses form one global batch (data
        x context parallel); a no-op without either."""
        if self.dims.dp * self.dims.cp > 1:
            dist.all_reduce(tensor, group=self.meshes.loss.get_group())
        return tensor

    def all_reduce_pp(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the pipeline stages of this rank's pipeline (in place)."""
        if self.dims.pp > 1:
            dist.all_reduce(tensor, group=self.meshes.pp.get_group())
        return tensor

    def min_over_world(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise minimum over every rank of every mesh dimension (in place): decisions
        that all ranks must share, e.g. whether a step is skipped."""
        if self.distributed and self.dims.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor

    def broadcast_from_main(self, obj):
        """The main rank's ``obj`` on every rank (a small picklable value)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def new_group(self):
        """A new gloo group over all ranks (every rank must call this at the same point),
        or None in a single process."""
        return dist.new_group(backend="gloo") if self.distributed else None

    def collective_device(self) -> torch.device:
        """Collectives run on the backend's device: CUDA for NCCL, CPU for gloo."""
        if self.distributed and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.distributed:
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
