"""The objective plugin interface: token windows in, a model batch and its loss out."""

from __future__ import annotations

from dataclasses import dataclass

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


def positions_in_documents(doc_ids: torch.Tensor) -> torch.Tensor:
    """(b, s) position of each token within its document run: rotary positions that restart
    at 0 where a new document starts in a packed window."""
    s = doc_ids.shape[1]
    index = torch.arange(s, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token losses over targets. Objectives return sums, and the step divides by the
    target count of the whole global batch, so the mean is exact under data parallelism and
    gradient accumulation even when microbatches hold different numbers of targets."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
