import math

import numpy as np
import torch

from triforge.trainer.data.loader import TokenWindows
from triforge.trainer.objectives import IGNORE_INDEX, ObjectiveConfig, build_objective
from triforge.trainer.objectives import masked as masked_module
from triforge.trainer.objectives.masked import draw_mlm_noise, mask_tokens

I = IGNORE_INDEX  # noqa: E741


def mlm(vocab: int = 258, *, mask_prob: float = 0.15, reset_positions: bool = False):
    cfg = ObjectiveConfig(name="mlm", mask_prob=mask_prob)
    return build_objective(cfg, tokenizer_vocab=vocab, pad_id=vocab - 1, seed=7,
                           reset_positions=reset_positions)


def test_mask_tokens_is_exact():
    tokens = np.array([10, 11, 12, 13, 14, 15])
    inputs, labels = mask_tokens(tokens, np.array([1, 4, 5]), np.array([99, 3, 15]))
    assert inputs.tolist() == [10, 99, 12, 13, 3, 15]
    assert labels.tolist() == [I, 11, I, I, 14, 15]
    assert tokens.tolist() == [10, 11, 12, 13, 14, 15]  # the window is not modified


def test_make_batch_is_exact_with_injected_noise(monkeypatch):
    def fixed_noise(tokens, *, mask_prob, mask_id, vocab, rng):
        return np.array([0, 3, 6]), np.array([mask_id, 5, tokens[6]])

    monkeypatch.setattr(masked_module, "draw_mlm_noise", fixed_noise)
    tokens = torch.arange(100, 108)[None]
    docs = torch.tensor([[3, 3, 3, 4, 4, 4, 4, 5]])
    objective = mlm(reset_positions=True)
    batch = objective.make_batch(TokenWindows(tokens, docs, torch.tensor([0])))
    assert batch.inputs.tolist() == [[258, 101, 102, 5, 104, 105, 106]]
    assert batch.labels.tolist() == [[100, I, I, 103, I, I, 106]]
    assert batch.mask.kind == "full" and batch.mask.doc_ids.tolist() == [[3, 3, 3, 4, 4, 4, 4]]
    assert batch.positions.tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    plain = mlm().make_batch(TokenWindows(tokens, None, torch.tensor([0])))
    assert plain.mask.is_plain_full and plain.positions is None


def test_make_batch_draws_each_row_from_seed_and_sample_id():
    objective = mlm()
    tokens = torch.randint(0, 258, (2, 41))
    batch = objective.make_batch(TokenWindows(tokens, None, torch.tensor([12, 5])))
    for row, sample_id in enumerate([12, 5]):
        rng = np.random.default_rng([7, sample_id, masked_module.MLM_STREAM])
        positions, repl = draw_mlm_noise(tokens[row, :40].numpy(), mask_prob=0.15, mask_id=258,
                                         vocab=258, rng=rng)
        inputs, labels = mask_tokens(tokens[row, :40].numpy(), positions, repl)
        assert batch.inputs[row].tolist() == inputs.tolist()
        assert batch.labels[row].tolist() == labels.tolist()


def test_selects_round_mask_prob_n_positions_and_at_least_one():
    rng = np.random.default_rng(0)
    tokens = np.arange(64)
    for mask_prob, expected in [(0.15, 10), (0.5, 32), (0.001, 1), (0.999, 64)]:
        positions, repl = draw_mlm_noise(tokens, mask_prob=mask_prob, mask_id=500, vocab=300,
                                         rng=rng)
        assert len(positions) == len(repl) == expected
        assert (np.diff(positions) > 0).all() and positions[0] >= 0 and positions[-1] < 64


def test_selection_is_uniform_and_replacements_split_80_10_10():
    """2000 rows x 64 tokens, 10 selected per row. Every count below is binomial; each is
    asserted within 5 standard deviations of its mean (a false failure has probability
    < 1e-5 per test even over the 64 position counts)."""
    vocab, rows, n = 1000, 2000, 64
    objective = mlm(vocab)
    tokens = torch.randint(0, vocab, (rows, n + 1), generator=torch.Generator().manual_seed(0))
    batch = objective.make_batch(TokenWindows(tokens, None, torch.arange(rows)))
    selected = batch.labels != I
    assert (selected.sum(1) == 10).all()

    def within_5_sd(count, trials, p):
        return abs(count - trials * p) <= 5 * math.sqrt(trials * p * (1 - p))

    for count in selected.sum(0).tolist():
        assert within_5_sd(count, rows, 10 / n)
    k = int(selected.sum())
    inputs, originals = batch.inputs[selected], batch.labels[selected]
    masked = int((inputs == objective.token_ids["<mask>"]).sum())
    kept = int((inputs == originals).sum())
    randomized = k - masked - kept
    assert within_5_sd(masked, k, 0.8)
    # a random token equals the original with probability 1 / vocab
    assert within_5_sd(kept, k, 0.1 + 0.1 / vocab)
    assert within_5_sd(randomized, k, 0.1 * (1 - 1 / vocab))
    # labels are the original tokens, random replacements are never the objective's tokens
    assert torch.equal(originals, tokens[:, :n][selected])
    assert int(inputs.max()) <= vocab and torch.equal(batch.inputs[~selected],
                                                      tokens[:, :n][~selected])
    assert int(inputs[inputs != objective.token_ids["<mask>"]].max()) < vocab
