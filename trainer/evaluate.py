"""Validation loss and perplexity on a fixed set of validation windows."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .data.loader import WindowLoader


class Evaluator:
    """Scores the same ``num_batches`` x ``batch_size`` validation windows every time, so
    successive evaluations (and runs) are directly comparable."""

    def __init__(self, loader: WindowLoader, objective, *, batch_size: int, num_batches: int,
                 every: int):
        n = loader.sampler.num_samples
        self.indices = np.arange(batch_size * num_batches) % n
        self.loader = loader
        self.objective = objective
        self.batch_size = batch_size
        self.every = every

    def should_run(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    @torch.no_grad()
    def run(self, model: nn.Module, device: torch.device) -> dict:
        was_training = model.training
        model.eval()
        total, count = torch.zeros((), device=device), 0
        for start in range(0, len(self.indices), self.batch_size):
            windows = self.loader.windows(self.indices[start : start + self.batch_size])
            batch = self.objective.make_batch(windows).to(device)
            logits = model(batch.inputs, mask=batch.mask, positions=batch.positions)
            total += self.objective.loss(logits, batch)
            count += batch.num_targets
        model.train(was_training)
        val_loss = total.item() / max(1, count)
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
