"""The prefix-LM row layout shared by span corruption and UL2.

One decoder reads ``prefix ++ targets``: attention is bidirectional over the prefix and
causal over the targets, and only target tokens are predicted. With z = prefix ++ targets
and P = len(prefix), inputs = z[:-1] and labels = z[1:], where labels before position P - 1
are ignored: the last prefix position predicts the first target token, and the last target
token is a label only. Rows are right-padded to the sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from triforge.kernels.attention import AttentionMask

from .base import IGNORE_INDEX, Batch, positions_by_id


@dataclass
class PrefixRow:
    """One laid-out sample: inputs, labels and doc_ids are (seq_len,); doc_ids may be None."""

    inputs: np.ndarray
    labels: np.ndarray
    prefix_len: int
    doc_ids: np.ndarray | None = None


def layout_prefix_lm(prefix: np.ndarray, targets: np.ndarray, *, seq_len: int, pad_id: int,
                     prefix_docs: np.ndarray | None = None,
                     target_docs: np.ndarray | None = None) -> PrefixRow:
    """Lay out ``prefix ++ targets`` (at most seq_len + 1 tokens) as one row (module doc).

    Padding gets the document id max + 1, which no real token of the row has, so it never
    joins a document and every padding query still sees itself.
    """
    z = np.concatenate([prefix, targets]).astype(np.int64)
    p = len(prefix)
    if p < 1 or len(targets) < 1 or len(z) > seq_len + 1:
        raise ValueError(
            f"a prefix-LM row needs a prefix(>=1) and targets(>=1) within seq_len + 1 tokens; "
            f"got {p} + {len(targets)} for seq_len({seq_len})"
        )
    pad = seq_len - (len(z) - 1)
    inputs = np.concatenate([z[:-1], np.full(pad, pad_id, dtype=np.int64)])
    labels = np.concatenate([z[1:], np.full(pad, IGNORE_INDEX, dtype=np.int64)])
    labels[: p - 1] = IGNORE_INDEX
    docs = None
    if prefix_docs is not None:
        docs_z = np.concatenate([prefix_docs, target_docs]).astype(np.int64)
        docs = np.concatenate([docs_z[:-1], np.full(pad, docs_z.max() + 1, dtype=np.int64)])
    return PrefixRow(inputs, labels, p, docs)


def stack_prefix_rows(rows: list[PrefixRow], *, reset_positions: bool) -> Batch:
    """A ``prefix``-masked Batch; with document ids, attention stays within each document
    (bidirectional over its prefix tokens, causal over its targets)."""
    inputs = torch.from_numpy(np.stack([r.inputs for r in rows]))
    labels = torch.from_numpy(np.stack([r.labels for r in rows]))
    prefix_len = torch.tensor([r.prefix_len for r in rows], dtype=torch.int64)
    if rows[0].doc_ids is None:
        return Batch(inputs, labels, AttentionMask("prefix", prefix_len=prefix_len))
    docs = torch.from_numpy(np.stack([r.doc_ids for r in rows]))
    positions = positions_by_id(docs) if reset_positions else None
    return Batch(inputs, labels, AttentionMask("prefix", prefix_len, docs), positions)
