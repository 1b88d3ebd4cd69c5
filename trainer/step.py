"""One optimizer step's forward and backward passes, with gradient accumulation."""

from __future__ import annotations

import torch
from torch import nn

from triforge.parallel.context import ParallelContext, to_local_value
from triforge.parallel.data_parallel import set_gradient_sync

from .objectives import Batch


def global_loss_scale(batch: Batch, ctx: ParallelContext, device, *,
                      loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(target count of the global batch, factor for a rank's summed loss).

    Data-parallel gradient reduction averages over ranks, hence the factor dp; fp16's loss
    scale multiplies in too (the step divides gradients by it again)."""
    n_targets = ctx.all_reduce_dp(torch.tensor(float(batch.num_targets), device=device))
    n_targets = n_targets.clamp(min=1.0)
    return n_targets, (ctx.dims.dp * loss_scale) / n_targets


class DirectRunner:
    """Forward and backward of a whole model on this rank (no pipeline)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def forward_backward(self, objective, batch: Batch, *, microbatches: int, device,
                         ctx: ParallelContext, loss_scale: float = 1.0):
        return forward_backward(self.model, objective, batch, microbatches=microbatches,
                                device=device, ctx=ctx, loss_scale=loss_scale)

    def loss_sum(self, objective, batch: Batch, ctx: ParallelContext) -> torch.Tensor:
        """Summed loss of ``batch`` without gradients (evaluation)."""
        with ctx.loss_context():
            logits = self.model(batch.inputs, mask=batch.mask, positions=batch.positions)
            return to_local_value(objective.loss(logits, batch.labels))


def forward_backward(
    model: nn.Module, objective, batch: Batch, *, microbatches: int, device: torch.device,
    ctx: ParallelContext, loss_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate gradients of the mean target loss of the global batch (times
    ``loss_scale``).

    ``batch`` is this rank's slice. Each microbatch's summed loss is divided by the target
    count of the whole global batch (summed over data-parallel ranks), so the gradient is
    that of the global mean however targets fall into ranks and microbatches. Returns the
    global mean loss (detached, on ``device``, the same on every rank) and this rank's own
    loss sum (to tell which rank produced a non-finite value).
    """
    n_targets, scale = global_loss_scale(batch, ctx, device, loss_scale=loss_scale)
    total = torch.zeros((), device=device)
    micros = batch.split(microbatches)
    with ctx.loss_context():
        for i, micro in enumerate(micros):
            set_gradient_sync(model, i == len(micros) - 1)
            micro = micro.to(device)
            logits = model(micro.inputs, mask=micro.mask, positions=micro.positions)
            loss_sum = objective.loss(logits, micro.labels)
            (loss_sum * scale).backward()
            total += to_local_value(loss_sum.detach())
    return ctx.all_reduce_dp(total.clone()) / n_targets, total


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
