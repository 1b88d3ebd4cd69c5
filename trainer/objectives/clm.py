"""Causal language modeling: predict each next token."""

from __future__ import annotations

import torch

from triforge.kernels.attention import AttentionMask

from .base import Batch, summed_cross_entropy

_CAUSAL = AttentionMask("causal")


class CausalLM:
    name = "clm"

    def make_batch(self, windows: torch.Tensor) -> Batch:
        """windows (b, s + 1) -> inputs = tokens 0..s-1, labels = tokens 1..s."""
        return Batch(inputs=windows[:, :-1], labels=windows[:, 1:], mask=_CAUSAL)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed over targets (see ``summed_cross_entropy``)."""
        return summed_cross_entropy(logits, labels)
