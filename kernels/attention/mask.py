"""The attention-mask spec that objectives produce and every attention backend understands.

A spec is small (a kind plus optional per-sequence data) instead of a dense (s, s) tensor, so
fused kernels can decide per tile whether it is fully masked and skip it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK_KINDS = ("causal", "full", "prefix")


@dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may attend to.

    kind: ``causal`` (key <= query), ``full`` (bidirectional) or ``prefix`` (bidirectional over
        the first ``prefix_len[b]`` positions of sequence b, causal after).
    prefix_len: int tensor of shape (b,), required for ``prefix``.
    doc_ids: int tensor of shape (b, L); when given, a query attends only to keys with the same
        document id (packed sequences), combined with ``kind``. Indexed by position.
    q_start, k_start: the positions of the first query and the first key. By default keys
        sit at 0..s_k-1 and queries at the end of them (``q_start = s_k - s_q``), as for
        training and for decoding with a cache. Context parallelism computes one block of a
        longer sequence at a time: queries and keys then start where that block's chunks
        sit, and causality, prefix and document ids are all judged by these positions
        (``doc_ids`` then covers the whole sequence, L >= every position + 1).
    """

    kind: str = "causal"
    prefix_len: torch.Tensor | None = None
    doc_ids: torch.Tensor | None = None
    q_start: int | None = None
    k_start: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ValueError(f"attention mask kind '{self.kind}' is not one of {MASK_KINDS}")
        if (self.kind == "prefix") != (self.prefix_len is not None):
            raise ValueError("prefix_len is required for kind='prefix' and only allowed there")

    @property
    def is_plain_causal(self) -> bool:
        return self.kind == "causal" and self.doc_ids is None and not self.is_offset

    @property
    def is_plain_full(self) -> bool:
        return self.kind == "full" and self.doc_ids is None

    @property
    def is_offset(self) -> bool:
        """Whether positions were given explicitly (a block of a longer sequence)."""
        return self.q_start is not None or self.k_start != 0

    def starts(self, seq_q: int, seq_k: int) -> tuple[int, int]:
        """(position of the first query, of the first key) for these lengths."""
        return (seq_k - seq_q if self.q_start is None else self.q_start), self.k_start


def dense_mask(mask: AttentionMask, batch: int, seq_q: int, seq_k: int, device) -> torch.Tensor:
    """Boolean (b, 1, s_q, s_k) tensor, True where attention is allowed.

    By default queries are aligned to the end of the keys (query i sits at key position
    i + s_k - s_q), which is what incremental decoding with a cache needs; ``q_start`` and
    ``k_start`` place both elsewhere.
    """
    q_start, k_start = mask.starts(seq_q, seq_k)
    q_pos = torch.arange(seq_q, device=device)[:, None] + q_start
    k_pos = torch.arange(seq_k, device=device)[None, :] + k_start
    allowed = torch.ones(batch, seq_q, seq_k, dtype=torch.bool, device=device)
    if mask.kind == "causal":
        allowed = allowed & (k_pos <= q_pos)
    elif mask.kind == "prefix":
        prefix = mask.prefix_len.to(device).view(batch, 1, 1)
        allowed = allowed & ((k_pos <= q_pos) | (k_pos < prefix))
    if mask.doc_ids is not None:
        docs = mask.doc_ids.to(device)
        q_docs, k_docs = docs[:, q_pos[:, 0]], docs[:, k_pos[0]]
        allowed = allowed & (q_docs[:, :, None] == k_docs[:, None, :])
    return allowed[:, None]
