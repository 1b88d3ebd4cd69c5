"""The ``StepRunner`` of pipeline parallelism: this rank's stages under a schedule.

parallel/pipeline.py splits the model and builds the schedule; this runner drives it with
the trainer's loss normalization (trainer/runner.py), so both runners share one formula.
"""

from __future__ import annotations

import torch
from torch import nn

from triforge.parallel.context import ParallelContext, to_local_value
from triforge.parallel.pipeline import (
    build_schedule,
    stage_kwargs,
    sum_tied_gradients,
    tied_embedding_group,
)

from .objectives import Batch
from .runner import LossFunction, StepLoss, start_step, step_loss


class PipelineRunner:
    """Runs one step of a pipeline schedule over this rank's stages.

    The loss function sees the last stage's output per microbatch; it returns the summed
    loss scaled by the global normalizer, so gradients need no rescaling. The schedule
    reports those values per microbatch; they are unscaled for reporting and added up over
    stages and data ranks.
    """

    def __init__(self, parts: list[nn.Module], stage_ids: list[int], n_stages: int,
                 ctx: ParallelContext, device: torch.device, *, schedule: str,
                 microbatches: int):
        self.parts = parts
        self.microbatches = microbatches
        self.schedule = build_schedule(parts, stage_ids, n_stages, ctx.meshes.pp.get_group(),
                                       device, schedule=schedule, microbatches=microbatches,
                                       loss_fn=self._loss)
        # A tied embedding lives on the first and the last stage: sum the two gradients.
        tied = parts[0].cfg.tie_embeddings  # the same on every rank: group creation agrees
        self._tied_weights = [w for part in parts if (w := part.stage_tied_weight()) is not None]
        self._tied_group = tied_embedding_group(ctx) if tied else None
        self.has_first = 0 in stage_ids
        self.has_last = n_stages - 1 in stage_ids
        self._objective: LossFunction | None = None
        self._scale = torch.ones((), device=device)

    def _loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._objective.loss(output, labels) * self._scale

    def _run(self, objective: LossFunction, batch: Batch, ctx: ParallelContext,
             scale: torch.Tensor, *, train: bool) -> torch.Tensor:
        self._objective, self._scale = objective, scale
        args = (batch.inputs,) if self.has_first else ()
        target = batch.labels if self.has_last else None
        losses = [] if self.has_last else None
        kwargs = stage_kwargs(batch)  # every rank: each of its stages needs them
        with ctx.loss_context():
            if train:
                self.schedule.step(*args, target=target, losses=losses, **kwargs)
                sum_tied_gradients(self._tied_weights, self._tied_group)
            else:
                self.schedule.eval(*args, target=target, losses=losses, **kwargs)
        if losses:
            total = torch.stack([to_local_value(x.detach()) for x in losses]).sum() / scale
        else:
            total = torch.zeros_like(scale)
        return ctx.all_reduce_pp(total)

    def forward_backward(self, objective: LossFunction, batch: Batch, *, ctx: ParallelContext,
                         device: torch.device, loss_scale: float = 1.0) -> StepLoss:
        n_targets, scale = start_step(self.parts, batch, ctx, device, loss_scale=loss_scale,
                                      microbatches=self.microbatches)
        total = self._run(objective, batch.to(device), ctx, scale, train=True)
        return step_loss(total, n_targets, ctx)

    def loss_sum(self, objective: LossFunction, batch: Batch,
                 ctx: ParallelContext) -> torch.Tensor:
        with torch.no_grad():
            return self._run(objective, batch, ctx, torch.ones((), device=batch.inputs.device),
                             train=False)
