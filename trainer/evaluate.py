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
    successive evaluations (and runs) are directly comparable. ``loaders`` maps a source
    name to its validation loader: one unnamed source gives ``val_loss``; a blend's sources
    each give ``val_loss/<name>`` (forgetting shows there) and ``val_loss`` over them all."""

    def __init__(self, loaders: dict[str, WindowLoader], objective: Objective, *,
                 batch_size: int, num_batches: int, every: int, dp_rank: int = 0,
                 dp_size: int = 1):
        # Each data-parallel rank scores its contiguous share of every batch, as in training,
        # and the runner splits it into the training micro-batches: every layout then scores
        # the same groups of samples together, which routing that depends on the other
        # tokens of a micro-batch (expert choice, an expert capacity) needs to give the same
        # validation loss. Sums are added up over ranks.
        per_rank = max(1, batch_size // dp_size)
        grid = np.arange(batch_size * num_batches).reshape(num_batches, batch_size)
        mine = grid[:, dp_rank * per_rank:(dp_rank + 1) * per_rank].reshape(-1)
        self.indices = {name: mine % loader.sampler.num_samples
                        for name, loader in loaders.items()}
        self.loaders = loaders
        self.objective = objective
        self.batch_size = per_rank
        self.every = every

    def should_run(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    @torch.no_grad()
    def run(self, runner: StepRunner, parts: list[nn.Module], device: torch.device,
            ctx: ParallelContext) -> dict:
        for part in parts:
            part.eval()
        # per source: loss sum, target count
        sums = torch.zeros(len(self.loaders), 2, device=device, dtype=torch.float64)
        for row, (name, loader) in enumerate(self.loaders.items()):
            indices = self.indices[name]
            for start in range(0, len(indices), self.batch_size):
                windows = loader.batch(indices[start : start + self.batch_size])
                batch = ctx.context_shard(self.objective.make_batch(windows)).to(device)
                sums[row, 0] += runner.loss_sum(self.objective, batch, ctx).double()
                sums[row, 1] += batch.num_targets
        for part in parts:
            part.train()
        ctx.all_reduce_loss(sums)
        total = sums.sum(dim=0)
        val_loss = (total[0] / total[1].clamp(min=1)).item()
        record = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
        for row, name in enumerate(self.loaders):
            if name:
                record[f"val_loss/{name}"] = (sums[row, 0] / sums[row, 1].clamp(min=1)).item()
        return record
