"""Grouped-query self-attention with rotary embeddings; the math goes through the dispatcher.

The attention math itself is a submodule, ``Attention.core`` (an ``AttentionCore``): the
seam where context parallelism puts a ring-attention core in place from outside, without
touching the projections or monkey-patching. It holds no parameters, so replacing it does
not change checkpoints.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from triforge.kernels.attention import AttentionMask, attention

from .config import ModelConfig
from .rope import apply_rope, rope_for


class AttentionCore(nn.Module):
    """softmax(q k^T * scale + mask) v on (batch, heads, seq, head_dim) tensors, through the
    backend dispatcher."""

    def __init__(self, *, backend: str):
        super().__init__()
        self.backend = backend

    def forward(self, q_bhsd: torch.Tensor, k_bhsd: torch.Tensor, v_bhsd: torch.Tensor,
                mask: AttentionMask) -> torch.Tensor:
        return attention(q_bhsd, k_bhsd, v_bhsd, mask, backend=self.backend)


class Attention(nn.Module):
    """Projections and rotary embeddings around an ``AttentionCore``. Only ``x`` is
    positional, so tensor-parallel input plans key on it alone."""

    def __init__(self, cfg: ModelConfig, *, backend: str):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.core = AttentionCore(backend=backend)
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(
        self, x: torch.Tensor, *, rope_cos: torch.Tensor, rope_sin: torch.Tensor,
        mask: AttentionMask, positions: torch.Tensor | None,
    ) -> torch.Tensor:
        b, s, _ = x.shape
        # Rotary angles for this input's length: under sequence parallelism x arrives here
        # already gathered to the full sequence, and pipeline stages need no extra inputs.
        cos, sin = rope_for(rope_cos, rope_sin, s, positions)
        # view(b, s, -1, head_dim): the head count comes from the weights, so projections
        # sharded over heads by tensor parallelism work without changes here.
        q_bshd = self.wq(x).view(b, s, -1, self.head_dim)
        k_bshd = self.wk(x).view(b, s, -1, self.head_dim)
        v_bshd = self.wv(x).view(b, s, -1, self.head_dim)
        q_bshd, k_bshd = apply_rope(q_bshd, cos, sin), apply_rope(k_bshd, cos, sin)
        out_bhsd = self.core(q_bshd.transpose(1, 2), k_bshd.transpose(1, 2),
                             v_bshd.transpose(1, 2), mask)
        return self.wo(out_bhsd.transpose(1, 2).reshape(b, s, -1))

    def init_weights(self, std: float, out_std: float) -> None:
        for lin in (self.wq, self.wk, self.wv):
            nn.init.trunc_normal_(lin.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        nn.init.trunc_normal_(self.wo.weight, mean=0.0, std=out_std, a=-3 * out_std, b=3 * out_std)


def scaled_out_std(std: float, n_layers: int) -> float:
    """GPT-2 style: residual output projections shrink with depth so the stream stays O(1)."""
    return std / math.sqrt(2 * n_layers)
