"""One optimizer step's forward and backward passes, with gradient accumulation."""

from __future__ import annotations

import torch
from torch import nn

from triforge.parallel.context import ParallelContext, to_local_value

from .objectives import Batch


def forward_backward(
    model: nn.Module, objective, batch: Batch, *, microbatches: int, device: torch.device,
    ctx: ParallelContext,
) -> torch.Tensor:
    """Accumulate gradients of the mean target loss of the global batch.

    ``batch`` is this rank's slice. Each microbatch's summed loss is divided by the target
    count of the whole global batch (summed over data-parallel ranks), so the gradient is
    that of the global mean however targets fall into ranks and microbatches. Data-parallel
    gradient reduction averages over ranks, hence the factor dp. Returns the global mean
    loss (detached, on ``device``), the same on every rank.
    """
    n_targets = ctx.all_reduce_dp(torch.tensor(float(batch.num_targets), device=device))
    n_targets = n_targets.clamp(min=1.0)
    scale = ctx.dims.dp / n_targets
    total = torch.zeros((), device=device)
    with ctx.loss_context():
        for micro in batch.split(microbatches):
            micro = micro.to(device)
            logits = model(micro.inputs, mask=micro.mask, positions=micro.positions)
            loss_sum = objective.loss(logits, micro)
            (loss_sum * scale).backward()
            total += to_local_value(loss_sum.detach())
    return ctx.all_reduce_dp(total) / n_targets


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global gradient norm over all shards (before clipping); clips when ``max_norm`` > 0.

    Sharded gradients are DTensors; the full value of their norm is the norm of the
    unsharded gradient, the same on every rank.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = to_local_value(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm)
    return norm
