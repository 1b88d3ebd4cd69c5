"""The ``StepRunner`` for a whole model on this rank (no pipeline), with gradient
accumulation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from triforge.parallel.context import ParallelContext, to_local_value

from .objectives import Batch
from .runner import LossFunction, StepLoss, start_step, step_loss


class DirectRunner:
    """A ``StepRunner`` for the whole model on this rank: ``microbatches`` accumulation
    passes, gradients reduced over data-parallel ranks in the last one only (``sync``: the
    engine's ``set_gradient_sync``; None without data parallelism; ``backward``: the
    engine's, as DeepSpeed runs the backward itself)."""

    def __init__(self, model: nn.Module, *, microbatches: int = 1,
                 sync: Callable[[bool], None] | None = None,
                 backward: Callable[[torch.Tensor], None] = torch.Tensor.backward):
        self.model = model
        self.microbatches = microbatches
        self.sync = sync
        self.backward = backward

    def forward_backward(self, objective: LossFunction, batch: Batch, *, ctx: ParallelContext,
                         device: torch.device, loss_scale: float = 1.0) -> StepLoss:
        """Each microbatch's summed loss is divided by the target count of the whole global
        batch (``global_loss_scale``), so the gradient is that of the global mean however
        targets fall into ranks and microbatches."""
        n_targets, scale = start_step([self.model], batch, ctx, device, loss_scale=loss_scale,
                                      microbatches=self.microbatches)
        total = torch.zeros((), device=device)
        micros = batch.split(self.microbatches)
        with ctx.loss_context():
            for i, micro in enumerate(micros):
                if self.sync is not None:
                    self.sync(i == len(micros) - 1)
                micro = micro.to(device)
                logits = self.model(micro.inputs, mask=micro.mask, positions=micro.positions)
                loss_sum = objective.loss(logits, micro.labels)
                self.backward(loss_sum * scale)
                total += to_local_value(loss_sum.detach())
        return step_loss(total, n_targets, ctx)

    def loss_sum(self, objective: LossFunction, batch: Batch,
                 ctx: ParallelContext) -> torch.Tensor:
        """In the training micro-batches (same groups of samples as a step's)."""
        total = torch.zeros((), device=batch.inputs.device)
        with ctx.loss_context():
            for micro in batch.split(min(self.microbatches, batch.inputs.shape[0])):
                logits = self.model(micro.inputs, mask=micro.mask, positions=micro.positions)
                total = total + to_local_value(objective.loss(logits, micro.labels))
        return total
