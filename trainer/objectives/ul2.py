"""UL2 mixture of denoisers: each sample draws R, S or X and says which by a mode token.

R (regular) and X (extreme) are span corruption with their own (mean span, noise density);
S (sequential) is prefix LM: prefix = raw[:k], targets = raw[k:], split k uniform in
[1, L - 1]. The mode token <R>, <S> or <X> is the first prefix token, so the model knows
which kind of gap to fill. All modes share the prefix-LM layout of span corruption.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.loader import TokenWindows
from .base import Batch, sample_rngs, special_token_ids, summed_cross_entropy
from .config import UL2_MODES, ObjectiveConfig
from .noise import random_spans_noise_mask, span_raw_length
from .prefix_lm import PrefixRow, layout_prefix_lm, stack_prefix_rows
from .span import sentinel_names, span_corruption_row

UL2_STREAM = 3  # keeps this objective's noise independent of other objectives' noise


def sequential_row(tokens: np.ndarray, docs: np.ndarray | None, split: int, mode_id: int, *,
                   seq_len: int, pad_id: int) -> PrefixRow:
    """S denoiser row: prefix = mode token ++ tokens[:split], targets = tokens[split:]."""
    prefix = np.concatenate([[mode_id], tokens[:split]])
    if docs is None:
        return layout_prefix_lm(prefix, tokens[split:], seq_len=seq_len, pad_id=pad_id)
    prefix_docs = np.concatenate([[docs[0]], docs[:split]])
    return layout_prefix_lm(prefix, tokens[split:], seq_len=seq_len, pad_id=pad_id,
                            prefix_docs=prefix_docs, target_docs=docs[split:])


class UL2:
    """Per sample: draw a mode from ``ul2_weights``, then corrupt the start of the window."""

    name = "ul2"

    def __init__(self, cfg: ObjectiveConfig, *, tokenizer_vocab: int, pad_id: int, seed: int,
                 reset_positions: bool = False):
        self.special_tokens = sentinel_names(cfg.num_sentinels) + tuple(
            f"<{m}>" for m in UL2_MODES
        )
        self.token_ids = special_token_ids(self.special_tokens, tokenizer_vocab)
        self.vocab_size = tokenizer_vocab + len(self.special_tokens)
        self.sentinel_ids = np.array(
            [self.token_ids[n] for n in sentinel_names(cfg.num_sentinels)], dtype=np.int64
        )
        weights = np.asarray(cfg.ul2_weights, dtype=np.float64)
        self.mode_probs = weights / weights.sum()
        # (mean span, noise density) of the span-corruption modes
        self.span_modes = {
            "R": (cfg.ul2_r_mean_span, cfg.ul2_r_noise_density),
            "X": (cfg.ul2_x_mean_span, cfg.ul2_x_noise_density),
        }
        self.num_sentinels = cfg.num_sentinels
        self.pad_id, self.seed, self.reset_positions = pad_id, seed, reset_positions

    def make_row(self, tokens: np.ndarray, docs: np.ndarray | None, mode: str,
                 rng: np.random.Generator) -> PrefixRow:
        """One sample's row from its raw window ``tokens`` (s + 1,) in ``mode``."""
        seq_len = len(tokens) - 1
        mode_id = self.token_ids[f"<{mode}>"]
        if mode == "S":
            # the mode token takes one slot, so s raw tokens fill the s + 1 of the row
            split = int(rng.integers(1, seq_len))
            return sequential_row(tokens[:seq_len], None if docs is None else docs[:seq_len],
                                  split, mode_id, seq_len=seq_len, pad_id=self.pad_id)
        mean_span, density = self.span_modes[mode]
        length = span_raw_length(seq_len + 1, density, mean_span, self.num_sentinels, extra=1)
        mask = random_spans_noise_mask(length, density, mean_span, self.num_sentinels, rng)
        return span_corruption_row(
            tokens[:length], None if docs is None else docs[:length], mask, self.sentinel_ids,
            seq_len=seq_len, pad_id=self.pad_id, lead=(mode_id,),
        )

    def make_batch(self, windows: TokenWindows) -> Batch:
        """tokens (b, s + 1) -> a prefix-LM batch of s columns, a mode per sample."""
        rngs = sample_rngs(windows.sample_ids, seed=self.seed, stream=UL2_STREAM,
                           objective=self.name)
        if windows.tokens.shape[1] < 3:
            raise ValueError(f"seq_len({windows.tokens.shape[1] - 1}) is too short for ul2")
        tokens = windows.tokens.numpy()
        docs = windows.doc_ids.numpy() if windows.doc_ids is not None else None
        rows = []
        for b, rng in enumerate(rngs):
            mode = UL2_MODES[rng.choice(len(UL2_MODES), p=self.mode_probs)]
            rows.append(self.make_row(tokens[b], None if docs is None else docs[b], mode, rng))
        return stack_prefix_rows(rows, reset_positions=self.reset_positions)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed over targets (see ``summed_cross_entropy``)."""
        return summed_cross_entropy(logits, labels)
