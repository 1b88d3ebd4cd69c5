"""The data-parallel engine: how a wrapped model's gradients are synchronized, unscaled,
measured, clipped and applied, and what of it a checkpoint saves.

The trainer's step order is fixed (forward/backward, unscale, agree on the verdict, then
step or skip); what each phase does belongs to the engine. ``FSDP2Engine`` is the first
implementation (FSDP2 sharding, replication or HSDP, and the single process, where FSDP
does not wrap). A second engine (DeepSpeed ZeRO) implements the same ``DataParallelEngine``
and the trainer does not ask which one it has.

Life cycle: ``wrap`` each model part while the model is built (after tensor parallelism
and activation checkpointing), then ``attach`` the parts and their optimizer once they
exist; from then on the step calls the rest.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy

from triforge.parallel.context import ParallelContext, to_local_value
from triforge.parallel.data_parallel import apply_fsdp, set_gradient_sync
from triforge.parallel.mesh import RoleMeshes

from .loss_scale import LossScaler
from .optim import Optimizers
from .precision import PrecisionConfig
from .state import ModelOptimizerState, ModelState


class DataParallelEngine(Protocol):
    optimizer: Optimizers  # its param_groups carry the learning rate the trainer sets

    def wrap(self, part: nn.Module) -> None:
        """Shard or replicate one model part in place (or nothing, for one process)."""
        ...

    def attach(self, parts: list[nn.Module], optimizer: Optimizers) -> None: ...

    def set_gradient_sync(self, enabled: bool) -> None:
        """Reduce gradients in the next backward, or only accumulate them (accumulation)."""
        ...

    def unscale_(self, scaler: LossScaler) -> None: ...

    def grad_norm(self) -> torch.Tensor:
        """The global gradient norm over every shard and stage: the single-process norm."""
        ...

    def step(self, *, max_norm: float, grad_norm: torch.Tensor) -> None:
        """Clip to ``max_norm`` (0: no clipping) and apply the update."""
        ...

    def skip(self, grad_norm: torch.Tensor) -> None:
        """Drop this step's gradients; parameters and optimizer state stay bit for bit."""
        ...

    def zero_grad(self) -> None: ...

    def loss_scaler(self, cfg: PrecisionConfig, *, enabled: bool) -> LossScaler:
        """The loss scaler of this run (fp16; disabled otherwise), once ``attach`` ran."""
        ...

    def forward_module(self, part: nn.Module) -> nn.Module:
        """What a step calls for the forward of ``part`` (the part itself, or a wrapper)."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """The backward of one micro-batch's loss (an engine may run it itself)."""
        ...

    def tensor_state(self) -> ModelOptimizerState:
        """Model and optimizer state, for the checkpoint (resharded on load)."""
        ...

    def model_state(self) -> ModelState:
        """The model alone (``checkpoint.init_from`` with ``load=weights``)."""
        ...


class FSDP2Engine:
    """FSDP2 over the dense FSDP mesh whenever the layout has data or context parallelism
    (``ParallelDims.fsdp_enabled``); plain local gradients otherwise."""

    def __init__(self, ctx: ParallelContext, *, reshard_after_forward: bool = True,
                 mp_policy: MixedPrecisionPolicy | None = None):
        self.ctx = ctx
        self.reshard_after_forward = reshard_after_forward
        self.mp_policy = mp_policy
        self.parts: list[nn.Module] = []
        self.optimizer: Optimizers | None = None

    @property
    def wraps(self) -> bool:
        return self.ctx.meshes is not None and self.ctx.dims.fsdp_enabled

    def wrap(self, part: nn.Module) -> None:
        if self.wraps:
            meshes: RoleMeshes = self.ctx.meshes
            expert_mesh = meshes.expert_fsdp if self.ctx.dims.ep > 1 else None
            apply_fsdp(part, meshes.fsdp, reshard_after_forward=self.reshard_after_forward,
                       mp_policy=self.mp_policy, expert_mesh=expert_mesh)

    def attach(self, parts: list[nn.Module], optimizer: Optimizers) -> None:
        self.parts, self.optimizer = parts, optimizer

    def set_gradient_sync(self, enabled: bool) -> None:
        for part in self.parts:
            set_gradient_sync(part, enabled)

    def unscale_(self, scaler: LossScaler) -> None:
        scaler.unscale_(self.parts)

    def grad_norm(self) -> torch.Tensor:
        return global_grad_norm(self.parts, self.ctx)

    def step(self, *, max_norm: float, grad_norm: torch.Tensor) -> None:
        clip_gradients(self.parts, max_norm, grad_norm)
        self.optimizer.step()

    def skip(self, grad_norm: torch.Tensor) -> None:
        """Nothing to undo: ``zero_grad`` follows, and the optimizer never saw the step."""

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def loss_scaler(self, cfg: PrecisionConfig, *, enabled: bool) -> LossScaler:
        return LossScaler(cfg, enabled=enabled)

    def forward_module(self, part: nn.Module) -> nn.Module:
        return part

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def tensor_state(self) -> ModelOptimizerState:
        return ModelOptimizerState(self.parts, self.optimizer.optimizers)

    def model_state(self) -> ModelState:
        return ModelState(self.parts)


def global_grad_norm(parts: list[nn.Module], ctx: ParallelContext) -> torch.Tensor:
    """Gradient norm over all shards and pipeline stages: the single-process norm.

    Sharded gradients are DTensors; the full value of their norm is the norm of the
    unsharded gradient. Pipeline stages hold disjoint parameters, so their squared norms
    add, except a tied embedding's copy on the last stage, which is left out (its gradient
    equals the embedding's after ``sum_tied_gradients``).
    """
    copies = {id(w) for part in parts if (w := part.tied_head_copy()) is not None}
    grads = [p.grad for part in parts for p in part.parameters()
             if p.grad is not None and id(p) not in copies]
    # One norm per device mesh (expert-parallel weights live on another mesh than FSDP's,
    # and DTensor ops do not mix meshes), their squares added.
    squares = [to_local_value(torch.nn.utils.get_total_norm(group, norm_type=2.0)) ** 2
               for group in by_mesh(grads).values()]
    norm_sq = torch.stack(squares).sum() if squares else torch.zeros(())
    return (ctx.all_reduce_pp(norm_sq) if ctx.dims.pp > 1 else norm_sq).sqrt()


def by_mesh(tensors) -> dict[object, list[torch.Tensor]]:
    """``tensors`` grouped by their DTensor device mesh (None: plain tensors)."""
    groups: dict[object, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(getattr(t, "device_mesh", None), []).append(t)
    return groups


def clip_gradients(parts: list[nn.Module], max_norm: float, norm: torch.Tensor) -> None:
    """Scale gradients so their global ``norm`` is at most ``max_norm`` (0: no clipping)."""
    if max_norm > 0:
        params = [p for part in parts for p in part.parameters() if p.grad is not None]
        for group in by_mesh(params).values():  # per mesh, as for the norm
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, norm)
