import math

import numpy as np
import torch

from triforge.trainer.data.loader import TokenWindows
from triforge.trainer.objectives import IGNORE_INDEX, ObjectiveConfig, build_objective
from triforge.trainer.objectives import ul2 as ul2_module
from triforge.trainer.objectives.noise import span_counts, span_raw_length
from triforge.trainer.objectives.ul2 import sequential_row

I = IGNORE_INDEX  # noqa: E741
VOCAB, PAD = 258, 257


def ul2(weights=(0.5, 0.25, 0.25), *, num_sentinels: int = 100, reset_positions: bool = False):
    cfg = ObjectiveConfig(name="ul2", ul2_weights=list(weights), num_sentinels=num_sentinels)
    return build_objective(cfg, tokenizer_vocab=VOCAB, pad_id=PAD, seed=5,
                           reset_positions=reset_positions)


def test_sequential_row_is_exact():
    tokens, docs = np.arange(10, 16), np.array([2, 2, 3, 3, 3, 3])
    row = sequential_row(tokens, docs, 3, 99, seq_len=6, pad_id=0)
    # prefix <S> 10 11 12 | targets 13 14 15
    assert row.inputs.tolist() == [99, 10, 11, 12, 13, 14]
    assert row.labels.tolist() == [I, I, I, 13, 14, 15]
    assert row.prefix_len == 4 and row.doc_ids.tolist() == [2, 2, 2, 3, 3, 3]


def test_span_modes_are_exact_with_an_injected_mask(monkeypatch):
    monkeypatch.setattr(ul2_module, "random_spans_noise_mask",
                        lambda length, *a: np.isin(np.arange(length), [2]))
    objective = ul2((1.0, 0.0, 0.0), num_sentinels=4, reset_positions=True)
    r, s0 = objective.token_ids["<R>"], objective.token_ids["<extra_id_0>"]
    assert (r, s0) == (VOCAB + 4, VOCAB)
    # s=8: 1 + L + 2 <= 9 -> L=6 (noise round(0.9)=1 in 1 span)
    tokens = torch.arange(30, 39)[None]
    docs = torch.tensor([[4, 4, 4, 4, 6, 6, 6, 6, 6]])
    batch = objective.make_batch(TokenWindows(tokens, docs, torch.tensor([3])))
    # prefix <R> 30 31 <0> 33 34 35 | targets <0> 32
    assert batch.inputs.tolist() == [[r, 30, 31, s0, 33, 34, 35, s0]]
    assert batch.labels.tolist() == [[I, I, I, I, I, I, s0, 32]]
    assert batch.mask.prefix_len.tolist() == [7]
    assert batch.mask.doc_ids.tolist() == [[4, 4, 4, 4, 4, 6, 6, 4]]
    assert batch.positions.tolist() == [[0, 1, 2, 3, 4, 0, 1, 5]]


def test_sequential_mode_predicts_the_rest_of_the_window():
    objective = ul2((0.0, 1.0, 0.0))
    tokens = torch.randint(0, VOCAB, (64, 33))
    batch = objective.make_batch(TokenWindows(tokens, None, torch.arange(64)))
    assert (batch.inputs[:, 0] == objective.token_ids["<S>"]).all()
    assert torch.equal(batch.inputs[:, 1:], tokens[:, :31])
    for row in range(64):
        p = int(batch.mask.prefix_len[row])
        assert batch.labels[row].tolist() == [I] * (p - 1) + tokens[row, p - 1 : 32].tolist()


def test_split_point_is_uniform():
    """S with s=32: split k = prefix_len - 1 uniform on 1..31. Over 2000 samples the mean is
    within 5 standard errors of 16, and every split occurs (a miss has probability
    < 31 * (30/31)^2000 ~ 1e-27)."""
    objective = ul2((0.0, 1.0, 0.0))
    batch = objective.make_batch(TokenWindows(torch.zeros(2000, 33, dtype=torch.int64), None,
                                              torch.arange(2000)))
    splits = (batch.mask.prefix_len - 1).numpy()
    assert set(splits.tolist()) == set(range(1, 32))
    sd = math.sqrt((31**2 - 1) / 12)
    assert abs(splits.mean() - 16) <= 5 * sd / math.sqrt(2000)


def test_mode_frequencies_follow_the_weights():
    """Over 2000 samples each mode count is binomial(2000, w) and is asserted within 5
    standard deviations; the span modes keep their own lengths."""
    objective = ul2((0.5, 0.25, 0.25))
    n = 2000
    tokens = torch.randint(0, VOCAB, (n, 65))
    batch = objective.make_batch(TokenWindows(tokens, None, torch.arange(n)))
    lead = batch.inputs[:, 0]
    for mode, w in zip("RSX", (0.5, 0.25, 0.25), strict=True):
        rows = lead == objective.token_ids[f"<{mode}>"]
        count = int(rows.sum())
        assert abs(count - n * w) <= 5 * math.sqrt(n * w * (1 - w)), (mode, count)
        if mode == "S":
            continue
        mean_span, density = objective.span_modes[mode]
        length = span_raw_length(65, density, mean_span, 100, extra=1)
        noise, spans = span_counts(length, density, mean_span, 100)
        assert (batch.mask.prefix_len[rows] == 1 + length - noise + spans).all()
        assert ((batch.labels[rows] != I).sum(1) == noise + spans).all()
    assert int((lead >= VOCAB + 100).sum()) == n  # every row starts with a mode token


def test_zero_weight_modes_are_never_drawn():
    objective = ul2((0.0, 0.0, 3.0))
    batch = objective.make_batch(TokenWindows(torch.zeros(200, 65, dtype=torch.int64), None,
                                              torch.arange(200)))
    assert (batch.inputs[:, 0] == objective.token_ids["<X>"]).all()
