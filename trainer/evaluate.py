"""Validation loss and perplexity on a fixed set of validation windows."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from triforge.parallel.context import ParallelContext

from .data.loader import WindowLoader
from .objectives import Objective
from .runner import StepRunner


class Evaluator:
    """Scores the same ``num_batches`` x ``batch_size`` validation windows every time, so
    successive evaluations (and runs) are directly comparable."""

    def __init__(self, loader: WindowLoader, objective: Objective, *, batch_size: int, num_batches: int,
                 every: int, dp_rank: int = 0, dp_size: int = 1):
        n = loader.sampler.num_samples
        # Each data-parallel rank scores its contiguous share of every batch, as in training,
        # and the runner splits it into the training micro-batches: every layout then scores
        # the same groups of samples together, which routing that depends on the other
        # tokens of a micro-batch (expert choice, an expert capacity) needs to give the same
        # validation loss. Sums are added up over ranks.
        per_rank = max(1, batch_size // dp_size)
        grid = np.arange(batch_size * num_batches).reshape(num_batches, batch_size)
        self.indices = grid[:, dp_rank * per_rank:(dp_rank + 1) * per_rank].reshape(-1) % n
        batch_size = per_rank
        self.loader = loader
        self.objective = objective
        self.batch_size = batch_size
        self.every = every

    def should_run(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    @torch.no_grad()
    def run(self, runner: StepRunner, parts: list[nn.Module], device: torch.device,
            ctx: ParallelContext) -> dict:
        for part in parts:
            part.eval()
        sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, target count
        for start in range(0, len(self.indices), self.batch_size):
            windows = self.loader.batch(self.indices[start : start + self.batch_size])
            batch = self.objective.make_batch(windows).to(device)
            sums[0] += runner.loss_sum(self.objective, batch, ctx).double()
            sums[1] += batch.num_targets
        for part in parts:
            part.train()
        ctx.all_reduce_loss(sums)
        val_loss = (sums[0] / sums[1].clamp(min=1)).item()
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
