"""One optimizer step on a whole model (no pipeline), with gradient accumulation, and the
gradient norm and clipping over every shard and pipeline stage."""

from __future__ import annotations

import torch
from torch import nn

from triforge.parallel.context import ParallelContext, to_local_value
from triforge.parallel.data_parallel import set_gradient_sync

from .objectives import Batch
from .runner import (
    LossFunction,
    StepLoss,
    aux_loss_scale,
    global_loss_scale,
    set_aux_loss_scale,
    step_loss,
)


class DirectRunner:
    """A ``StepRunner`` for the whole model on this rank: ``microbatches`` accumulation
    passes, gradients reduced over data-parallel ranks in the last one only."""

    def __init__(self, model: nn.Module, *, microbatches: int = 1):
        self.model = model
        self.microbatches = microbatches

    def forward_backward(self, objective: LossFunction, batch: Batch, *, ctx: ParallelContext,
                         device: torch.device, loss_scale: float = 1.0) -> StepLoss:
        """Each microbatch's summed loss is divided by the target count of the whole global
        batch (``global_loss_scale``), so the gradient is that of the global mean however
        targets fall into ranks and microbatches."""
        n_targets, scale = global_loss_scale(batch, ctx, device, loss_scale=loss_scale)
        set_aux_loss_scale([self.model], aux_loss_scale(loss_scale, self.microbatches))
        total = torch.zeros((), device=device)
        micros = batch.split(self.microbatches)
        with ctx.loss_context():
            for i, micro in enumerate(micros):
                set_gradient_sync(self.model, i == len(micros) - 1)
                micro = micro.to(device)
                logits = self.model(micro.inputs, mask=micro.mask, positions=micro.positions)
                loss_sum = objective.loss(logits, micro.labels)
                (loss_sum * scale).backward()
                total += to_local_value(loss_sum.detach())
        return step_loss(total, n_targets, ctx)

    def loss_sum(self, objective: LossFunction, batch: Batch,
                 ctx: ParallelContext) -> torch.Tensor:
        with ctx.loss_context():
            logits = self.model(batch.inputs, mask=batch.mask, positions=batch.positions)
            return to_local_value(objective.loss(logits, batch.labels))


def global_grad_norm(parts: list[nn.Module], ctx: ParallelContext) -> torch.Tensor:
    """Gradient norm over all shards and pipeline stages: the single-process norm.

    Sharded gradients are DTensors; the full value of their norm is the norm of the
    unsharded gradient. Pipeline stages hold disjoint parameters: their squared norms add.
    """
    grads = [p.grad for part in parts for p in part.parameters() if p.grad is not None]
    norm = to_local_value(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
    return ctx.all_reduce_pp(norm**2).sqrt() if ctx.dims.pp > 1 else norm


def clip_gradients(parts: list[nn.Module], max_norm: float, norm: torch.Tensor) -> None:
    """Scale gradients so their global ``norm`` is at most ``max_norm`` (0: no clipping)."""
    if max_norm > 0:
        for part in parts:
            torch.nn.utils.clip_grads_with_norm_(part.parameters(), max_norm, norm)
