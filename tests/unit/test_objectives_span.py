import math
from collections import Counter

import numpy as np
import pytest
import torch

from triforge.trainer.data.loader import TokenWindows
from triforge.trainer.objectives import IGNORE_INDEX, ObjectiveConfig, build_objective
from triforge.trainer.objectives import span as span_module
from triforge.trainer.objectives.noise import (
    random_partition,
    random_spans_noise_mask,
    span_counts,
    span_raw_length,
)
from triforge.trainer.objectives.prefix_lm import layout_prefix_lm
from triforge.trainer.objectives.span import corrupt_spans, span_corruption_row

I = IGNORE_INDEX  # noqa: E741
S0, S1, S2 = 258, 259, 260  # sentinel ids after a 258-token vocabulary


def test_corrupt_spans_is_exact():
    tokens = np.arange(10, 20)
    mask = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 1], dtype=bool)
    prefix, targets = corrupt_spans(tokens, mask, np.array([S0, S1, S2]))
    assert prefix.tolist() == [10, 11, S0, 14, 15, 16, S1, 18, S2]
    assert targets.tolist() == [S0, 12, 13, S1, 17, S2, 19]
    leading = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)
    prefix, targets = corrupt_spans(tokens, leading, np.array([S0, S1]))
    assert prefix.tolist() == [S0, 11, 12, 13, 14, 15, 16, 17, S1]
    assert targets.tolist() == [S0, 10, S1, 18, 19]
    with pytest.raises(ValueError, match="2 spans but 1 sentinels"):
        corrupt_spans(tokens, leading, np.array([S0]))


def test_layout_prefix_lm_is_exact():
    row = layout_prefix_lm(np.array([1, 2, 3]), np.array([7, 8]), seq_len=6, pad_id=0,
                           prefix_docs=np.array([4, 4, 5]), target_docs=np.array([5, 5]))
    assert row.inputs.tolist() == [1, 2, 3, 7, 0, 0]
    # the last prefix position predicts the first target; the last target is a label only
    assert row.labels.tolist() == [I, I, 7, 8, I, I]
    assert row.prefix_len == 3 and row.doc_ids.tolist() == [4, 4, 5, 5, 6, 6]
    full = layout_prefix_lm(np.array([1, 2]), np.array([7, 8, 9]), seq_len=4, pad_id=0)
    assert full.inputs.tolist() == [1, 2, 7, 8] and full.labels.tolist() == [I, 7, 8, 9]
    with pytest.raises(ValueError, match=r"got 2 \+ 4 for seq_len\(4\)"):
        layout_prefix_lm(np.array([1, 2]), np.array([7, 8, 9, 9]), seq_len=4, pad_id=0)


def test_span_corruption_row_carries_documents_and_a_lead_token():
    tokens, docs = np.arange(20, 28), np.array([0, 0, 0, 1, 1, 1, 1, 2])
    mask = np.array([0, 0, 1, 1, 0, 0, 1, 0], dtype=bool)  # span 0 crosses into doc 1
    row = span_corruption_row(tokens, docs, mask, np.array([S0, S1, S2]), seq_len=12,
                              pad_id=0, lead=(300,))
    prefix = [300, 20, 21, S0, 24, 25, S1, 27]
    targets = [S0, 22, 23, S1, 26]
    assert row.prefix_len == len(prefix)
    assert row.inputs.tolist() == prefix + targets[:-1]
    assert row.labels.tolist() == [I] * 7 + targets
    # the lead token joins the first raw token's document, a sentinel its span's first token's
    assert row.doc_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 2] + [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((100, 0.15, 3.0, 100), (15, 5)),
        ((100, 0.15, 3.0, 2), (15, 2)),  # capped by the sentinels
        ((10, 0.9, 3.0, 100), (9, 1)),  # capped by the kept tokens
        ((2, 0.15, 3.0, 100), (1, 1)),  # at least one hidden and one kept token
        ((2, 0.95, 3.0, 100), (1, 1)),
    ],
)
def test_span_counts(args, expected):
    assert span_counts(*args) == expected


def test_span_raw_length_is_the_longest_that_fits():
    # L=31: noise 5, 2 spans -> 35 > 33; L=30: noise round(4.5)=4, 1 span -> 32 <= 33
    assert span_raw_length(33, 0.15, 3.0, 100) == 30
    assert span_raw_length(4, 0.15, 3.0, 100) == 2
    for budget in (9, 65, 513):
        for extra in (0, 1):
            length = span_raw_length(budget, 0.15, 3.0, 100, extra=extra)
            fits = [extra + n + 2 * span_counts(n, 0.15, 3.0, 100)[1] <= budget
                    for n in range(2, budget + 1)]
            assert fits[length - 2] and not any(fits[length - 1:])
    with pytest.raises(ValueError, match=r"seq_len\(2\) is too short for span corruption"):
        span_raw_length(3, 0.15, 3.0, 100)


def test_random_partition_is_uniform_over_compositions():
    """5 into 3 positive parts has 6 compositions; each count over 6000 draws is binomial
    (6000, 1/6) and asserted within 5 standard deviations."""
    rng = np.random.default_rng(0)
    counts = Counter(tuple(random_partition(5, 3, rng).tolist()) for _ in range(6000))
    assert len(counts) == 6 and all(sum(c) == 5 and min(c) >= 1 for c in counts)
    sd = math.sqrt(6000 * (1 / 6) * (5 / 6))
    assert all(abs(n - 1000) <= 5 * sd for n in counts.values())
    assert random_partition(4, 1, rng).tolist() == [4]


def test_noise_mask_statistics():
    """L=200, density 0.15, mean span 3: every mask hides exactly 30 tokens in 10 spans (mean
    span 3). Over 2000 masks, run lengths match the uniform-composition means within 5
    standard errors, and the mask starts with a span as often as that model predicts."""
    rng = np.random.default_rng(1)
    masks = np.stack([random_spans_noise_mask(200, 0.15, 3.0, 100, rng) for _ in range(2000)])
    starts = masks & ~np.concatenate([np.zeros((2000, 1), bool), masks[:, :-1]], axis=1)
    assert (masks.sum(1) == 30).all() and (starts.sum(1) == 10).all()
    first_span = np.array([np.argmin(m[s:]) for m, s in zip(masks, starts.argmax(1), strict=True)])
    first_kept = starts.argmax(1)  # kept tokens before the first span (may be 0)

    def close(values, mean):
        return abs(values.mean() - mean) <= 5 * values.std() / math.sqrt(len(values))

    assert close(first_span, 3.0)
    # 170 kept tokens in 11 runs with empty ends: E[end run] = 172 / 11 - 1
    assert close(first_kept, 172 / 11 - 1)
    # P(first run empty) = P(first part of a composition of 172 into 11 is 1) = 10 / 171
    p = 10 / 171
    assert abs((first_kept == 0).sum() - 2000 * p) <= 5 * math.sqrt(2000 * p * (1 - p))


def span_objective(**knobs):
    cfg = ObjectiveConfig(name="span", **knobs)
    return build_objective(cfg, tokenizer_vocab=258, pad_id=257, seed=3, reset_positions=True)


def test_make_batch_is_exact_with_an_injected_mask(monkeypatch):
    # s=12: L=10 raw tokens (noise round(2.5)=2 in 1 span: 10 + 2 = 12 <= 13)
    monkeypatch.setattr(span_module, "random_spans_noise_mask",
                        lambda length, *a: np.isin(np.arange(length), [3, 4]))
    objective = span_objective(noise_density=0.25, mean_span=2.0, num_sentinels=4)
    tokens = torch.arange(20, 33)[None]
    docs = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2]])
    batch = objective.make_batch(TokenWindows(tokens, docs, torch.tensor([0])))
    assert batch.inputs.tolist() == [[20, 21, 22, S0, 25, 26, 27, 28, 29, S0, 23, 257]]
    assert batch.labels.tolist() == [[I] * 8 + [S0, 23, 24, I]]
    assert batch.mask.kind == "prefix" and batch.mask.prefix_len.tolist() == [9]
    # the sentinel takes doc 0 (its span starts there); padding gets the fresh id 2
    assert batch.mask.doc_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 2]]
    assert batch.positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4, 4, 5, 0]]
    plain = objective.make_batch(TokenWindows(tokens, None, torch.tensor([0])))
    assert plain.mask.doc_ids is None and plain.positions is None
    assert torch.equal(plain.inputs, batch.inputs) and torch.equal(plain.labels, batch.labels)


def test_make_batch_shapes_follow_the_span_counts():
    objective = span_objective()
    tokens = torch.randint(0, 258, (8, 129))
    batch = objective.make_batch(TokenWindows(tokens, None, torch.arange(8)))
    length = span_raw_length(129, 0.15, 3.0, 100)
    noise, spans = span_counts(length, 0.15, 3.0, 100)
    assert batch.inputs.shape == batch.labels.shape == (8, 128)
    assert (batch.mask.prefix_len == length - noise + spans).all()
    assert ((batch.labels != I).sum(1) == noise + spans).all()
