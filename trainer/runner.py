"""The contract between the trainer and whatever runs one step's forward and backward.

Two runners implement it: ``DirectRunner`` (trainer/step.py: the whole model on this rank,
with gradient accumulation) and ``PipelineRunner`` (trainer/pipeline_runner.py: this rank's
pipeline stages under a ``torch.distributed.pipelining`` schedule). The trainer, the
evaluator and the tests talk to a ``StepRunner`` and never ask which one it is.

Loss normalization lives here, in one place, for every runner: a rank's summed target loss
is multiplied by ``global_loss_scale`` so that the gradient is that of the mean loss over
the whole global batch, whatever the data-parallel degree, the number of microbatches or
the way targets fall into them, times fp16's loss scale; auxiliary losses attached inside
the model get the matching factor from ``aux_loss_scale``.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import nn

from triforge.parallel.context import ParallelContext

from .objectives import Batch


class LossFunction(Protocol):
    """What a runner needs from an objective: the summed loss of a microbatch's logits."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


class StepLoss(NamedTuple):
    mean: torch.Tensor  # global mean target loss (detached, on the device, same on all ranks)
    local_sum: torch.Tensor  # this rank's summed loss: tells which rank saw a non-finite value


class StepRunner(Protocol):
    """Runs one optimizer step's passes over this rank's slice of the global batch.

    ``microbatches`` is fixed when the runner is built (pipeline schedules fix it then):
    the number of forward/backward passes this rank's batch is cut into.
    """

    microbatches: int

    def forward_backward(self, objective: LossFunction, batch: Batch, *, ctx: ParallelContext,
                         device: torch.device, loss_scale: float = 1.0) -> StepLoss:
        """Accumulate the gradients of the global mean loss times ``loss_scale``."""
        ...

    def loss_sum(self, objective: LossFunction, batch: Batch,
                 ctx: ParallelContext) -> torch.Tensor:
        """Summed loss of ``batch`` without gradients (evaluation), on every rank."""
        ...


def global_loss_scale(batch: Batch, ctx: ParallelContext, device, *,
                      loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(target count of the global batch, factor for a rank's summed loss).

    The gradient reduction averages over the FSDP ranks (dp x cp: context-parallel ranks
    hold parts of the same sequences), hence that factor; fp16's loss scale multiplies in
    too (the step divides gradients by it again)."""
    n_targets = ctx.all_reduce_loss(torch.tensor(float(batch.num_targets), device=device))
    n_targets = n_targets.clamp(min=1.0)
    return n_targets, (ctx.dims.dp * ctx.dims.cp * loss_scale) / n_targets


def aux_loss_scale(loss_scale: float, microbatches: int) -> float:
    """Backward factor of an auxiliary loss attached in one microbatch's forward
    (models/side_outputs.py).

    The objective counts an auxiliary loss as its mean over the global batch's dp x m
    microbatches. Like the main loss's, its gradient is averaged over data-parallel ranks
    by the gradient reduction, so its factor per microbatch is
    loss_scale * dp / (dp * m) = loss_scale / m, whatever dp is.
    """
    return loss_scale / microbatches


def set_aux_loss_scale(parts: list[nn.Module], scale: float) -> None:
    """Give every block of this rank's model parts the auxiliary-loss factor of the step."""
    for part in parts:
        for controls in part.blocks_controls().values():
            controls.aux_loss_scale = scale


def start_step(parts: list[nn.Module], batch: Batch, ctx: ParallelContext, device, *,
               loss_scale: float, microbatches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What every runner does before its passes: give the blocks of ``parts`` the step's
    auxiliary-loss factor and return ``global_loss_scale``'s (target count, factor)."""
    set_aux_loss_scale(parts, aux_loss_scale(loss_scale, microbatches))
    return global_loss_scale(batch, ctx, device, loss_scale=loss_scale)


def step_loss(total: torch.Tensor, n_targets: torch.Tensor, ctx: ParallelContext) -> StepLoss:
    """The ``StepLoss`` of a rank whose summed loss this step is ``total``."""
    return StepLoss(ctx.all_reduce_loss(total.clone()) / n_targets, total)
