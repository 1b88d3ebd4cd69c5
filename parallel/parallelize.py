"""Apply every parallelism of a layout to a (meta-device) model, in the documented order:
tensor parallel first, then data parallel (FSDP2) around the tensor-parallel modules."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from .data_parallel import apply_fsdp
from .dims import ParallelDims
from .tensor_parallel import apply_tp


@dataclass(frozen=True)
class ParallelOptions:
    sequence_parallel: bool = True
    fsdp_reshard_after_forward: bool = True


def parallelize(model: nn.Module, dims: ParallelDims, mesh: DeviceMesh | None,
                opts: ParallelOptions) -> None:
    """Shard ``model`` in place for ``dims`` on ``mesh`` (None: one process, nothing to do)."""
    if mesh is None:
        return
    if dims.tp > 1:
        apply_tp(model, mesh["tp"], sequence_parallel=opts.sequence_parallel)
    if dims.dp > 1:
        dp_mesh = mesh["dp_replicate", "dp_shard"] if dims.dp_replicate > 1 else mesh["dp_shard"]
        apply_fsdp(model, dp_mesh, reshard_after_forward=opts.fsdp_reshard_after_forward)
