"""Shared by the attention-block and ring-attention tests: masks over a whole sequence and
the ring's tolerance."""

from __future__ import annotations

import torch

from triforge.kernels.attention import AttentionMask

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The ring adds one log-sum-exp merge per visit (cp of them) and sums dk, dv over cp visits,
# each a few fp32 roundings at the tensor's magnitude: RING_ULPS * cp fp32 ulps.
RING_ULPS = 4.0


def sequence_mask(kind: str, docs: bool, b: int, total: int, gen: torch.Generator,
                  **starts) -> AttentionMask:
    """A ``kind`` mask over ``total`` positions: prefix lengths 5, past the end and 0; with
    ``docs``, packed document ids (non-decreasing, 3 documents)."""
    prefix = torch.tensor([5, total + 3, 0][:b]) if kind == "prefix" else None
    doc_ids = torch.randint(0, 3, (b, total), generator=gen).sort(dim=1).values if docs else None
    return AttentionMask(kind, prefix_len=prefix, doc_ids=doc_ids, **starts)
