"""T5 span corruption, trained as a prefix LM in one decoder.

The corrupted text (each hidden span replaced by its sentinel) is the prefix; the targets
are each sentinel followed by the span it replaced. Example, spans "c d" and "g":
raw ``a b c d e f g h`` -> prefix ``a b <extra_id_0> e f <extra_id_1> h``,
targets ``<extra_id_0> c d <extra_id_1> g``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.loader import TokenWindows
from .base import Batch, sample_rngs, special_token_ids, summed_cross_entropy
from .config import ObjectiveConfig
from .noise import random_spans_noise_mask, span_raw_length
from .prefix_lm import PrefixRow, layout_prefix_lm, stack_prefix_rows

SPAN_STREAM = 2  # keeps this objective's noise independent of other objectives' noise


def sentinel_names(n: int) -> tuple[str, ...]:
    return tuple(f"<extra_id_{k}>" for k in range(n))


def span_starts(span_mask: np.ndarray) -> np.ndarray:
    """(L,) bool, True where a run of hidden tokens begins."""
    return span_mask & ~np.concatenate([[False], span_mask[:-1]])


def corrupt_spans(values: np.ndarray, span_mask: np.ndarray,
                  sentinels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prefix, targets) of ``values`` (L,) with hidden runs ``span_mask`` (L,) bool.

    Span k (k-th run of True) becomes ``sentinels[k]`` in the prefix and is preceded by it
    in the targets. Works on any per-token values: token ids, or document ids with
    ``sentinels`` set to each span's document.
    """
    starts = span_starts(span_mask)
    if starts.sum() != len(sentinels):
        raise ValueError(f"{int(starts.sum())} spans but {len(sentinels)} sentinels")
    if len(sentinels) == 0:
        return values.copy(), values[:0].copy()
    span_index = np.cumsum(starts) - 1
    keep = ~span_mask | starts
    prefix = np.where(span_mask, sentinels[span_index.clip(min=0)], values)[keep]
    starts_in_noise = np.flatnonzero(starts[span_mask])
    targets = np.insert(values[span_mask], starts_in_noise, sentinels)
    return prefix, targets


def span_corruption_row(tokens: np.ndarray, docs: np.ndarray | None, span_mask: np.ndarray,
                        sentinel_ids: np.ndarray, *, seq_len: int, pad_id: int,
                        lead: tuple[int, ...] = ()) -> PrefixRow:
    """Corrupt raw ``tokens`` (L,) and lay them out as a prefix-LM row.

    ``lead`` tokens (a UL2 mode token) start the prefix. A sentinel takes the document of
    the first token of its span, a lead token that of the first raw token.
    """
    starts = np.flatnonzero(span_starts(span_mask))
    prefix, targets = corrupt_spans(tokens, span_mask, sentinel_ids[: len(starts)])
    prefix = np.concatenate([np.asarray(lead, dtype=np.int64), prefix])
    if docs is None:
        return layout_prefix_lm(prefix, targets, seq_len=seq_len, pad_id=pad_id)
    prefix_docs, target_docs = corrupt_spans(docs, span_mask, docs[starts])
    prefix_docs = np.concatenate([np.full(len(lead), docs[0]), prefix_docs])
    return layout_prefix_lm(prefix, targets, seq_len=seq_len, pad_id=pad_id,
                            prefix_docs=prefix_docs, target_docs=target_docs)


class SpanCorruption:
    """Span corruption over the first L tokens of each window, L the most that fits the
    sequence length after rearranging (see ``span_raw_length``)."""

    name = "span"

    def __init__(self, cfg: ObjectiveConfig, *, tokenizer_vocab: int, pad_id: int, seed: int,
                 reset_positions: bool = False):
        self.cfg = cfg
        self.special_tokens = sentinel_names(cfg.num_sentinels)
        self.token_ids = special_token_ids(self.special_tokens, tokenizer_vocab)
        self.vocab_size = tokenizer_vocab + len(self.special_tokens)
        self.sentinel_ids = np.array(list(self.token_ids.values()), dtype=np.int64)
        self.pad_id, self.seed, self.reset_positions = pad_id, seed, reset_positions

    def make_batch(self, windows: TokenWindows) -> Batch:
        """tokens (b, s + 1) -> a prefix-LM batch of s columns."""
        rngs = sample_rngs(windows.sample_ids, seed=self.seed, stream=SPAN_STREAM,
                           objective=self.name)
        seq_len = windows.tokens.shape[1] - 1
        c = self.cfg
        length = span_raw_length(seq_len + 1, c.noise_density, c.mean_span, c.num_sentinels)
        tokens = windows.tokens.numpy()
        docs = windows.doc_ids.numpy() if windows.doc_ids is not None else None
        rows = []
        for b, rng in enumerate(rngs):
            mask = random_spans_noise_mask(length, c.noise_density, c.mean_span,
                                           c.num_sentinels, rng)
            rows.append(span_corruption_row(
                tokens[b, :length], None if docs is None else docs[b, :length], mask,
                self.sentinel_ids, seq_len=seq_len, pad_id=self.pad_id,
            ))
        return stack_prefix_rows(rows, reset_positions=self.reset_positions)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed over targets (see ``summed_cross_entropy``)."""
        return summed_cross_entropy(logits, labels)
