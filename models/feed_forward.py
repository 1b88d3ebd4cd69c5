"""Feed-forward layers of the blocks, chosen per layer by ``build_feed_forward``.

Every block asks ``build_feed_forward(cfg, layer_id, controls)`` for its feed-forward, so a
model mixes kinds by layer: mixture-of-experts layers (models/moe/) in every
``model.moe.every``-th block after ``model.moe.first_dense`` dense ones. A kind gets the
block's controls, which carry the per-step auxiliary-loss factor. A new kind also needs a
tensor-parallel plan (parallel/tensor_parallel.py keys plans by the feed-forward's type).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .side_outputs import BlockControls


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: ModelConfig, *, hidden: int = 0):
        super().__init__()
        hidden = hidden or cfg.hidden_dim
        self.w1 = nn.Linear(cfg.d_model, hidden, bias=False)
        self.w3 = nn.Linear(cfg.d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))

    def init_weights(self, std: float, out_std: float) -> None:
        for lin, s in ((self.w1, std), (self.w3, std), (self.w2, out_std)):
            nn.init.trunc_normal_(lin.weight, mean=0.0, std=s, a=-3 * s, b=3 * s)


def build_feed_forward(cfg: ModelConfig, layer_id: int, controls: BlockControls) -> nn.Module:
    """The feed-forward of block ``layer_id`` (0-based)."""
    if cfg.moe.is_moe_layer(layer_id):
        from .moe.layer import MoEFeedForward

        return MoEFeedForward(cfg, controls, layer_id=layer_id)
    return FeedForward(cfg)
