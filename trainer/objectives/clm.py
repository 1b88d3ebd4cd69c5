"""Causal language modeling: predict each next token."""

from __future__ import annotations

import torch

from triforge.kernels.attention import AttentionMask

from ..data.loader import TokenWindows
from .base import Batch, positions_in_documents, summed_cross_entropy
from .config import ObjectiveConfig

_CAUSAL = AttentionMask("causal")


class CausalLM:
    """Next-token prediction over packed windows. With document ids a token attends only
    within its own document; ``reset_positions`` restarts rotary positions per document."""

    name = "clm"
    special_tokens: tuple[str, ...] = ()

    def __init__(self, cfg: ObjectiveConfig | None = None, *, tokenizer_vocab: int = 0,
                 pad_id: int = 0, seed: int = 0, reset_positions: bool = False):
        # next-token prediction draws no noise and adds no tokens: cfg, pad_id, seed unused
        self.token_ids: dict[str, int] = {}
        self.vocab_size = tokenizer_vocab
        self.reset_positions = reset_positions

    def make_batch(self, windows: TokenWindows) -> Batch:
        """tokens (b, s + 1) -> inputs = tokens 0..s-1, labels = tokens 1..s."""
        inputs, labels = windows.tokens[:, :-1], windows.tokens[:, 1:]
        if windows.doc_ids is None:
            return Batch(inputs=inputs, labels=labels, mask=_CAUSAL)
        docs = windows.doc_ids[:, :-1]
        positions = positions_in_documents(docs) if self.reset_positions else None
        return Batch(inputs, labels, AttentionMask("causal", doc_ids=docs), positions)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed over targets (see ``summed_cross_entropy``)."""
        return summed_cross_entropy(logits, labels)
