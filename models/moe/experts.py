"""Routed experts: ``num_experts`` SwiGLU feed-forwards stored as stacked weights
(``w1``, ``w3``: (E, d, h); ``w2``: (E, h, d)), so sharding them along the expert dimension
is a plain dim-0 split.

The rows arrive grouped by expert (``counts[i]`` rows for expert i, in order). With
``grouped_mm`` all experts run in one ``torch.nn.functional.grouped_mm`` per projection
(cumulative int32 offsets; on CPU and CUDA, with autograd); otherwise an exact loop of one
matmul per expert, the reference the grouped path is tested against. The grouped matmul
needs every row stride to be a multiple of 16 bytes, which ``ModelConfig.validate`` checks
for the model's sizes (d and h multiples of 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def expert_mlp(x: torch.Tensor, counts: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
               w2: torch.Tensor, *, grouped_mm: bool) -> torch.Tensor:
    """The SwiGLU of expert i on its ``counts[i]`` rows of x, for stacked weights (also the
    local shard of an expert-parallel layer, parallel/expert_parallel.py)."""
    # Under autocast the dense layers compute in its dtype; the experts do the same.
    dtype = (torch.get_autocast_dtype(x.device.type)
             if torch.is_autocast_enabled(x.device.type) else w1.dtype)
    x = x.to(dtype)
    w1, w3, w2 = (w.to(dtype) for w in (w1, w3, w2))
    if grouped_mm:
        offs = torch.cumsum(counts, 0).to(torch.int32)
        h = F.silu(F.grouped_mm(x, w1, offs=offs)) * F.grouped_mm(x, w3, offs=offs)
        return F.grouped_mm(h, w2, offs=offs)
    outs = [(F.silu(rows @ w1[i]) * (rows @ w3[i])) @ w2[i]
            for i, rows in enumerate(torch.split(x, counts.tolist()))]
    return torch.cat(outs)


class GroupedExperts(nn.Module):
    def __init__(self, num_experts: int, d_model: int, hidden: int, *, grouped_mm: bool):
        super().__init__()
        self.grouped_mm = grouped_mm
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, hidden))
        self.w3 = nn.Parameter(torch.empty(num_experts, d_model, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, d_model))

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x (A, d) grouped by expert, counts (E,) -> (A, d)."""
        return expert_mlp(x, counts, self.w1, self.w3, self.w2, grouped_mm=self.grouped_mm)

    @torch.no_grad()
    def init_weights(self, std: float, out_std: float) -> None:
        for w, s in ((self.w1, std), (self.w3, std), (self.w2, out_std)):
            nn.init.trunc_normal_(w, mean=0.0, std=s, a=-3 * s, b=3 * s)
