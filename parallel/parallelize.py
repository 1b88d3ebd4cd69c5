"""Apply every parallelism of a layout to a (meta-device) model, in the documented order:
tensor parallel, activation checkpointing, then data parallel (FSDP2) around the result."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy

from .activation_checkpoint import apply_ac
from .data_parallel import apply_fsdp
from .dims import ParallelDims
from .mesh import RoleMeshes
from .tensor_parallel import apply_tp


@dataclass(frozen=True)
class ParallelOptions:
    sequence_parallel: bool = True
    fsdp_reshard_after_forward: bool = True
    activation_checkpoint: str = "none"
    ac_every: int = 2
    mp_policy: MixedPrecisionPolicy = MixedPrecisionPolicy()  # fp32 unless a policy is given


def parallelize(model: nn.Module, dims: ParallelDims, meshes: RoleMeshes | None,
                opts: ParallelOptions) -> None:
    """Apply the layout to ``model`` in place: TP, activation checkpointing, then FSDP over
    the dense FSDP mesh (``dims.fsdp_enabled`` decides). With ``meshes`` None (one process)
    only activation checkpointing applies."""
    if meshes is not None and dims.tp > 1:
        apply_tp(model, meshes.tp, sequence_parallel=opts.sequence_parallel)
    apply_ac(model, mode=opts.activation_checkpoint, every=opts.ac_every)
    if meshes is not None and dims.fsdp_enabled:
        apply_fsdp(model, meshes.fsdp, reshard_after_forward=opts.fsdp_reshard_after_forward,
                   mp_policy=opts.mp_policy)
