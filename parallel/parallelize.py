"""Apply every parallelism of a layout to a (meta-device) model, in the documented order:
tensor parallel, expert parallel, context parallel (ring-attention cores), activation
checkpointing, per-block compilation, then data parallel (the
engine's wrapping, FSDP2 by default) around the result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .activation_checkpoint import apply_ac
from .compile import apply_compile
from .context_parallel import apply_cp
from .dims import ParallelDims
from .expert_parallel import apply_ep, apply_global_balance
from .mesh import RoleMeshes
from .tensor_parallel import apply_tp


@dataclass(frozen=True)
class ParallelOptions:
    sequence_parallel: bool = True
    activation_checkpoint: str = "none"
    ac_every: int = 2
    compile: bool = False  # torch.compile each block (parallel/compile.py)
    cp_comm: str = "p2p"  # ring attention's transport (parallel/context_parallel.py)


def parallelize(model: nn.Module, dims: ParallelDims, meshes: RoleMeshes | None,
                opts: ParallelOptions, *, wrap_data_parallel: Callable[[nn.Module], None]) -> None:
    """Apply the layout to ``model`` in place: TP, EP, CP, the routers' global balance counts,
    compilation, activation checkpointing, then the data-parallel engine's wrapping (FSDP2
    over the dense FSDP mesh, or another engine's).
    With ``meshes`` None (one process) tensor parallelism does not apply."""
    if meshes is not None and dims.tp > 1:
        apply_tp(model, meshes.tp, sequence_parallel=opts.sequence_parallel)
    if meshes is not None and dims.ep > 1:
        apply_ep(model, meshes.ep, tp_mesh=meshes.tp if dims.tp > 1 else None)
    if meshes is not None and dims.cp > 1:
        apply_cp(model, meshes.cp, comm=opts.cp_comm)
    if meshes is not None and dims.dp * dims.cp > 1:
        apply_global_balance(model, meshes.loss)
    if opts.compile:
        apply_compile(model)
    apply_ac(model, mode=opts.activation_checkpoint, every=opts.ac_every)
    wrap_data_parallel(model)
