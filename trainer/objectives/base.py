"""The objective plugin interface: token windows in, a model batch and its loss out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from triforge.kernels.attention import AttentionMask

IGNORE_INDEX = -100


@dataclass
class Batch:
    """What one forward pass consumes.

    inputs, labels: (b, s) token ids; labels are IGNORE_INDEX where no loss is taken.
    mask: the attention-mask spec the attention backends understand.
    positions: (b, s) rotary positions, or None for 0..s-1.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    mask: AttentionMask
    positions: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        def move(t):
            return t.to(device, non_blocking=True) if t is not None else None

        mask = AttentionMask(
            self.mask.kind, move(self.mask.prefix_len), move(self.mask.doc_ids)
        )
        return Batch(move(self.inputs), move(self.labels), mask, move(self.positions))

    def split(self, n: int) -> list[Batch]:
        """``n`` microbatches along the batch dimension (for gradient accumulation)."""
        def chunks(t):
            return t.chunk(n) if t is not None else [None] * n

        parts = zip(
            chunks(self.inputs), chunks(self.labels), chunks(self.mask.prefix_len),
            chunks(self.mask.doc_ids), chunks(self.positions), strict=True,
        )
        return [
            Batch(i, lab, AttentionMask(self.mask.kind, p, d), pos)
            for i, lab, p, d, pos in parts
        ]

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


class Objective(Protocol):
    """A training objective (one file per objective in this folder): how token windows
    become a ``Batch`` and what the loss counts.

    ``vocab_size`` is the tokenizer's vocabulary plus the objective's special tokens (the
    model's embedding is sized from it); ``loss`` returns the sum over target tokens, which
    the step runner normalizes by the global batch's target count.
    """

    name: str
    special_tokens: tuple[str, ...]
    token_ids: dict[str, int]
    vocab_size: int

    def make_batch(self, windows) -> Batch: ...

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


def positions_in_documents(doc_ids: torch.Tensor) -> torch.Tensor:
    """(b, s) position of each token within its document run: rotary positions that restart
    at 0 where a new document starts in a packed window."""
    s = doc_ids.shape[1]
    index = torch.arange(s, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def positions_by_id(ids: torch.Tensor) -> torch.Tensor:
    """(b, s) rank of each token among the earlier tokens of its row with the same id.

    For contiguous document runs this equals ``positions_in_documents``; it also covers rows
    an objective rearranged (a document's prefix tokens, then its targets further right).
    """
    s = ids.shape[1]
    sorted_ids, order = torch.sort(ids, dim=1, stable=True)
    index = torch.arange(s, device=ids.device).expand_as(ids)
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return torch.empty_like(ids).scatter_(1, order, index - first)


def special_token_ids(names: tuple[str, ...], tokenizer_vocab: int) -> dict[str, int]:
    """Ids for an objective's own tokens, right after the tokenizer's vocabulary, in order."""
    return {name: tokenizer_vocab + i for i, name in enumerate(names)}


def sample_rngs(sample_ids: torch.Tensor | None, *, seed: int, stream: int,
                objective: str) -> list[np.random.Generator]:
    """One generator per sample, seeded by (seed, sample id, objective stream) alone: the
    noise of a sample then never depends on the batch it landed in, the parallel layout, a
    resume, or the global RNG state."""
    if sample_ids is None:
        raise ValueError(
            f"objective '{objective}' needs TokenWindows.sample_ids to seed its noise per sample; "
            "build windows with WindowLoader.batch"
        )
    return [np.random.default_rng([seed, int(i), stream]) for i in sample_ids.tolist()]


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token losses over targets. Objectives return sums, and the step divides by the
    target count of the whole global batch, so the mean is exact under data parallelism and
    gradient accumulation even when microbatches hold different numbers of targets."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
