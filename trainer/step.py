"""One optimizer step's forward and backward passes, with gradient accumulation."""

from __future__ import annotations

import torch
from torch import nn

from .objectives import Batch


def forward_backward(
    model: nn.Module, objective, batch: Batch, *, microbatches: int, device: torch.device
) -> torch.Tensor:
    """Accumulate gradients of the mean target loss of ``batch`` over ``microbatches``.

    Each microbatch's summed loss is divided by the target count of the whole batch, so the
    accumulated gradient is that of the batch mean however the targets fall into
    microbatches. Returns the batch mean loss (detached, on ``device``).
    """
    n_targets = max(1, batch.num_targets)
    total = torch.zeros((), device=device)
    for micro in batch.split(microbatches):
        micro = micro.to(device)
        logits = model(micro.inputs, mask=micro.mask, positions=micro.positions)
        loss_sum = objective.loss(logits, micro)
        (loss_sum / n_targets).backward()
        total += loss_sum.detach()
    return total / n_targets


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global gradient norm (before clipping); clips in place when ``max_norm`` > 0."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm)
    return norm
