"""Apply every parallelism of a layout to a (meta-device) model, in the documented order:
tensor parallel, activation checkpointing, then data parallel (FSDP2) around the result."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy

from .activation_checkpoint import apply_ac
from .data_parallel import apply_fsdp
from .dims import ParallelDims
from .tensor_parallel import apply_tp


@dataclass(frozen=True)
class ParallelOptions:
    sequence_parallel: bool = True
    fsdp_reshard_after_forward: bool = True
    activation_checkpoint: str = "none"
    ac_every: int = 2
    mp_policy: MixedPrecisionPolicy = MixedPrecisionPolicy()  # fp32 unless a policy is given


def parallelize(model: nn.Module, dims: ParallelDims, mesh: DeviceMesh | None,
                opts: ParallelOptions) -> None:
    """Apply the layout to ``model`` in place: TP, activation checkpointing, then FSDP.
    With ``mesh`` None (one process) only activation checkpointing applies."""
    if mesh is not None and dims.tp > 1:
        apply_tp(model, mesh["tp"], sequence_parallel=opts.sequence_parallel)
    apply_ac(model, mode=opts.activation_checkpoint, every=opts.ac_every)
    if mesh is not None and dims.dp > 1:
        dp_mesh = mesh["dp_replicate", "dp_shard"] if dims.dp_replicate > 1 else mesh["dp_shard"]
        apply_fsdp(model, dp_mesh, reshard_after_forward=opts.fsdp_reshard_after_forward,
                   mp_policy=opts.mp_policy)
