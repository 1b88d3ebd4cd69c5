"""Mixture-of-experts balance at the step boundary (trainer hooks): the expert-bias update
of auxiliary-loss-free balancing and the routing metrics.

Each MoE layer records its step's routing statistics per forward pass (models/moe/layer.py);
the step's are those of its last ``microbatches`` passes. At the step start they are cleared.
After the optimizer step, the counts of tokens routed to each expert
are summed over the ranks that hold different data (dp x cp) and every expert bias moves by
``rate * sign(mean count - count)``; every rank holds the same sums, so the biases stay
identical on all ranks (and replicas) without being communicated. At log steps each layer
reports the spread of its tokens per expert (min, max, coefficient of variation), the
dropped share, its balance and z losses and its bias norm, summed over data-parallel ranks
and pipeline stages so the main rank reports every layer.
"""

from __future__ import annotations

import torch
from torch import nn

from triforge.models.moe.layer import TOTALS, MoEFeedForward
from triforge.parallel.context import ParallelContext


def moe_layers(parts: list[nn.Module]) -> list[MoEFeedForward]:
    """This rank's MoE layers (through any wrapper), ordered by layer index."""
    found = [m for part in parts for m in part.modules() if isinstance(m, MoEFeedForward)]
    return sorted(found, key=lambda m: m.layer_id)


class ExpertBalance:
    def __init__(self, parts: list[nn.Module], ctx: ParallelContext, device: torch.device, *,
                 bias_rate: float, moe_layer_ids: list[int], num_experts: int,
                 microbatches: int):
        self.layers, self.ctx, self.rate = moe_layers(parts), ctx, bias_rate
        self.microbatches = microbatches  # forward passes per layer and step on this rank
        self.layer_ids = moe_layer_ids  # every MoE layer of the model, on any stage
        self.device, self.num_experts = device, num_experts

    def install(self, hooks) -> None:
        hooks.step_start.append(self.step_start)
        hooks.after_optimizer_step.append(self.after_optimizer_step)
        hooks.at_log.append(self.at_log)

    def step_start(self, step: int) -> None:
        for layer in self.layers:
            layer.reset_statistics()

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        if not self.rate or not self.layers:
            return
        counts = torch.stack([m.step_statistics(self.microbatches)[0] for m in self.layers])
        counts = self.ctx.all_reduce_loss(counts.to(self.device))
        for layer, count in zip(self.layers, counts, strict=True):
            bias = layer.router.expert_bias
            bias += self.rate * torch.sign(count.mean() - count).to(bias.dtype)

    @torch.no_grad()
    def at_log(self, step: int, record: dict) -> None:
        if not self.layer_ids:
            return
        table = self._table()
        for row, layer_id in zip(table, self.layer_ids, strict=True):
            record.update(layer_metrics(layer_id, row))

    def _table(self) -> torch.Tensor:
        """(MoE layers of the model, E + totals + 1): counts, totals and squared bias norm,
        this rank's layers filled in, summed over dp x cp (counts, totals) and pp."""
        n = self.num_experts
        table = torch.zeros(len(self.layer_ids), n + len(TOTALS) + 1, device=self.device)
        for layer in self.layers:
            row = table[self.layer_ids.index(layer.layer_id)]
            counts, totals = layer.step_statistics(self.microbatches)
            row[:n] = counts
            row[n:n + len(TOTALS)] = totals
        self.ctx.all_reduce_loss(table)
        for layer in self.layers:  # the bias is the same on every data-parallel rank
            table[self.layer_ids.index(layer.layer_id), -1] = layer.router_bias_norm_sq()
        return self.ctx.all_reduce_pp(table)


def layer_metrics(layer_id: int, row: torch.Tensor) -> dict:
    """The JSONL metrics of one MoE layer from its row of ``ExpertBalance._table``."""
    counts = row[: -(len(TOTALS) + 1)]
    assigned, dropped, balance, z, micro = row[-(len(TOTALS) + 1):-1].tolist()
    mean = counts.mean()
    prefix = f"moe_{layer_id}_"
    return {
        prefix + "tokens_min": counts.min().item(),
        prefix + "tokens_max": counts.max().item(),
        prefix + "tokens_cv": (counts.std(unbiased=False) / mean).item() if mean > 0 else 0.0,
        prefix + "dropped": dropped / assigned if assigned else 0.0,
        prefix + "balance_loss": balance / micro if micro else 0.0,
        prefix + "z_loss": z / micro if micro else 0.0,
        prefix + "bias_norm": row[-1].sqrt().item(),
    }
