"""Span noise for denoising objectives: how many tokens and spans to hide, and where.

Like T5's ``random_spans_noise_mask``, the hidden (noise) tokens are cut into ``n_spans``
runs of random positive length that alternate with runs of kept tokens. T5 cuts the kept
tokens into ``n_spans`` positive runs too, so a sample always starts with a kept run and ends
with a span (with one span: always the tail, a plain prefix LM). Here the kept tokens are cut
into ``n_spans + 1`` runs whose first and last may be empty, so spans can sit anywhere. Only
the positions are random; the counts are a pure function of the length, so every sample of a
batch rearranges into a sequence of the same length.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def span_counts(length: int, noise_density: float, mean_span: float,
                max_spans: int) -> tuple[int, int]:
    """(noise tokens, noise spans) for ``length`` raw tokens; needs length >= 2.

    noise = round(length * noise_density) (Python's round: halves go to even), kept in
    [1, length - 1] so a span and a kept token exist; spans = round(noise / mean_span), kept
    in [1, min(max_spans, noise, length - noise)] so every span and every kept run between
    two spans has a token.
    """
    noise = min(max(1, round(length * noise_density)), length - 1)
    spans = min(max(1, round(noise / mean_span)), max_spans, noise, length - noise)
    return noise, spans


@lru_cache(maxsize=64)
def span_raw_length(budget: int, noise_density: float, mean_span: float, max_spans: int, *,
                    extra: int = 0) -> int:
    """The most raw tokens L whose rearranged sequence fits ``budget`` tokens.

    Span corruption turns L raw tokens into a prefix of L - noise + spans tokens and targets
    of noise + spans tokens, so it needs extra + L + 2 * spans <= budget (``extra``: tokens
    such as a mode token). That total grows with L, so the first fit from the top is the most.
    """
    for length in range(budget - extra, 1, -1):
        _, spans = span_counts(length, noise_density, mean_span, max_spans)
        if extra + length + 2 * spans <= budget:
            return length
    raise ValueError(
        f"seq_len({budget - 1}) is too short for span corruption: it needs room for at least "
        f"2 raw tokens, 2 sentinels and {extra} extra token(s)"
    )


def random_partition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``parts`` positive integers summing to ``total``, uniform over all such compositions
    (``parts - 1`` distinct cut points among the ``total - 1`` gaps)."""
    cuts = np.sort(rng.choice(total - 1, size=parts - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [total]]))


def random_spans_noise_mask(length: int, noise_density: float, mean_span: float,
                            max_spans: int, rng: np.random.Generator) -> np.ndarray:
    """(length,) bool, True at hidden tokens: kept and hidden runs alternate (module doc)."""
    noise, spans = span_counts(length, noise_density, mean_span, max_spans)
    noise_lengths = random_partition(noise, spans, rng)
    # spans + 1 kept runs with empty ends allowed: a positive partition of 2 more tokens,
    # less one at each end (uniform over such compositions)
    kept_lengths = random_partition(length - noise + 2, spans + 1, rng)
    kept_lengths[[0, -1]] -= 1
    run_lengths = np.append(np.stack([kept_lengths[:-1], noise_lengths], axis=1), kept_lengths[-1])
    run_is_noise = np.append(np.tile([False, True], spans), False)
    return np.repeat(run_is_noise, run_lengths)
