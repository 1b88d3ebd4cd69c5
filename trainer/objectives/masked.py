"""Masked language modeling (BERT): predict selected tokens from bidirectional context."""

from __future__ import annotations

import numpy as np
import torch

from triforge.kernels.attention import AttentionMask

from ..data.loader import TokenWindows
from .base import (
    IGNORE_INDEX,
    Batch,
    positions_in_documents,
    sample_rngs,
    special_token_ids,
    summed_cross_entropy,
)
from .config import ObjectiveConfig

MLM_STREAM = 1  # keeps this objective's noise independent of other objectives' noise
_FULL = AttentionMask("full")


def draw_mlm_noise(tokens: np.ndarray, *, mask_prob: float, mask_id: int, vocab: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(positions, replacements) for one row of ``tokens`` (n,).

    Exactly max(1, round(mask_prob * n)) positions, uniform without replacement, so every
    row carries the same number of targets. Each selected token independently becomes
    ``mask_id`` (p 0.8), a uniform random id in [0, vocab) (p 0.1), or stays (p 0.1).
    """
    n = len(tokens)
    positions = np.sort(rng.choice(n, size=min(n, max(1, round(mask_prob * n))), replace=False))
    u = rng.random(len(positions))
    random_ids = rng.integers(0, vocab, size=len(positions))
    replacements = np.where(u < 0.8, mask_id, np.where(u < 0.9, random_ids, tokens[positions]))
    return positions, replacements


def mask_tokens(tokens: np.ndarray, positions: np.ndarray,
                replacements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) of one row: inputs carry the replacements, labels the original token
    at the selected positions and IGNORE_INDEX elsewhere (logit i predicts label i)."""
    inputs = tokens.copy()
    inputs[positions] = replacements
    labels = np.full_like(tokens, IGNORE_INDEX)
    labels[positions] = tokens[positions]
    return inputs, labels


class MaskedLM:
    """Bidirectional attention (within documents, when document ids are given) over the
    first s tokens of each window."""

    name = "mlm"
    special_tokens = ("<mask>",)

    def __init__(self, cfg: ObjectiveConfig, *, tokenizer_vocab: int, pad_id: int, seed: int,
                 reset_positions: bool = False):
        self.mask_prob = cfg.mask_prob
        self.tokenizer_vocab = tokenizer_vocab
        self.token_ids = special_token_ids(self.special_tokens, tokenizer_vocab)
        self.vocab_size = tokenizer_vocab + len(self.special_tokens)
        self.seed, self.reset_positions = seed, reset_positions

    def make_batch(self, windows: TokenWindows) -> Batch:
        """tokens (b, s + 1) -> inputs, labels (b, s) from tokens 0..s-1."""
        rngs = sample_rngs(windows.sample_ids, seed=self.seed, stream=MLM_STREAM,
                           objective=self.name)
        tokens = windows.tokens[:, :-1].numpy()
        rows = []
        for row, rng in zip(tokens, rngs, strict=True):
            positions, replacements = draw_mlm_noise(
                row, mask_prob=self.mask_prob, mask_id=self.token_ids["<mask>"],
                vocab=self.tokenizer_vocab, rng=rng,
            )
            rows.append(mask_tokens(row, positions, replacements))
        inputs = torch.from_numpy(np.stack([r[0] for r in rows]))
        labels = torch.from_numpy(np.stack([r[1] for r in rows]))
        if windows.doc_ids is None:
            return Batch(inputs, labels, _FULL)
        docs = windows.doc_ids[:, :-1]
        positions = positions_in_documents(docs) if self.reset_positions else None
        return Batch(inputs, labels, AttentionMask("full", doc_ids=docs), positions)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed over targets (see ``summed_cross_entropy``)."""
        return summed_cross_entropy(logits, labels)
