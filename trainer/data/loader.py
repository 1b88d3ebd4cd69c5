"""Turn sample indices into token windows (and document ids for packed-sequence masking)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .sampler import GlobalSampler
from .shards import TokenSplit


@dataclass
class TokenWindows:
    """A batch of packed windows: ``tokens`` (b, s + 1) and, with document masking on, the
    document index of every token, ``doc_ids`` (b, s + 1).

    sample_ids: (b,) int64 global index of each window. Objectives that draw noise seed it
    from (seed, sample id), so a sample is corrupted the same way under any parallel layout,
    after a resume and in every evaluation.
    """

    tokens: torch.Tensor
    doc_ids: torch.Tensor | None = None
    sample_ids: torch.Tensor | None = None


class BatchSource(Protocol):
    """What the trainer draws its batches from: one dataset's ``WindowLoader`` or a
    ``BlendLoader`` (trainer/data/blend.py); its state is the data cursor."""

    def next_batch(self, global_batch: int, *, dp_rank: int = 0, dp_size: int = 1
                   ) -> TokenWindows: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class WindowLoader:
    """Windows of ``seq_len + 1`` tokens over a split; sample i starts at token i * seq_len."""

    def __init__(self, split: TokenSplit, seq_len: int, sampler: GlobalSampler, *,
                 document_ids: bool = False):
        self.split = split
        self.seq_len = seq_len
        self.sampler = sampler
        self.document_ids = document_ids

    @staticmethod
    def num_samples(split: TokenSplit, seq_len: int) -> int:
        return max(0, (len(split.tokens) - 1) // seq_len)

    def windows(self, indices: np.ndarray) -> torch.Tensor:
        """(len(indices), seq_len + 1) int64 token windows."""
        starts = indices * self.seq_len
        rows = [np.asarray(self.split.tokens[s : s + self.seq_len + 1]) for s in starts]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def doc_ids(self, indices: np.ndarray) -> torch.Tensor:
        """(len(indices), seq_len + 1) document index of every token of each window."""
        positions = indices[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        docs = np.searchsorted(self.split.doc_offsets, positions, side="right") - 1
        return torch.from_numpy(docs.astype(np.int64))

    def batch(self, indices: np.ndarray) -> TokenWindows:
        """Windows of ``indices``, with document ids when the loader provides them."""
        docs = self.doc_ids(indices) if self.document_ids else None
        sample_ids = torch.from_numpy(np.asarray(indices, dtype=np.int64).copy())
        return TokenWindows(self.windows(indices), docs, sample_ids)

    def next_batch(self, global_batch: int, *, dp_rank: int = 0, dp_size: int = 1) -> TokenWindows:
        """This rank's windows of the next global batch."""
        return self.batch(self.sampler.next_batch(global_batch, dp_rank=dp_rank, dp_size=dp_size))

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
