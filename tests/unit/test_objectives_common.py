"""Properties every objective must keep: reproducible noise, no attention across documents,
no query without a key, labels that are the right tokens."""

import pytest
import torch

from triforge.kernels.attention import dense_mask
from triforge.models import ModelConfig, build_model, materialize
from triforge.trainer.data.loader import TokenWindows
from triforge.trainer.objectives import IGNORE_INDEX, ObjectiveConfig, build_objective

VOCAB, PAD = 258, 257
NOISY = ["mlm", "span", "ul2"]


def make(name: str, *, seed: int = 11, reset_positions: bool = False):
    cfg = ObjectiveConfig(name=name, num_sentinels=8)
    return build_objective(cfg, tokenizer_vocab=VOCAB, pad_id=PAD, seed=seed,
                           reset_positions=reset_positions)


def packed_docs(rows: int, width: int, seed: int = 0) -> torch.Tensor:
    """(rows, width) document ids: 1-4 boundaries per row at random places."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.zeros(rows, width, dtype=torch.int64)
    for r in range(rows):
        cuts = torch.randperm(width - 1, generator=g)[: 1 + r % 4] + 1
        starts[r, cuts] = 1
    return starts.cumsum(1) + 3  # ids need not start at 0


def fields(batch) -> list:
    mask = batch.mask
    return [batch.inputs, batch.labels, mask.prefix_len, mask.doc_ids, batch.positions]


def assert_same(a, b) -> None:
    for x, y in zip(fields(a), fields(b), strict=True):
        assert (x is None and y is None) or torch.equal(x, y)


@pytest.mark.parametrize("name", NOISY)
def test_noise_depends_only_on_seed_and_sample_id(name):
    tokens = torch.randint(0, VOCAB, (3, 65), generator=torch.Generator().manual_seed(1))
    docs = packed_docs(3, 65)
    objective = make(name, reset_positions=True)
    batch = objective.make_batch(TokenWindows(tokens, docs, torch.tensor([4, 9, 2])))
    assert_same(batch, make(name, reset_positions=True).make_batch(
        TokenWindows(tokens, docs, torch.tensor([4, 9, 2]))))
    # sample 9's row is the same whatever it is batched with, and wherever it sits
    swapped = objective.make_batch(TokenWindows(tokens[[1, 0]], docs[[1, 0]],
                                                torch.tensor([9, 30])))
    for x, y in zip(fields(batch), fields(swapped), strict=True):
        assert x is None or torch.equal(x[1], y[0])
    # other sample ids or another seed draw other noise for the same tokens
    for other in (objective.make_batch(TokenWindows(tokens, docs, torch.tensor([5, 10, 3]))),
                  make(name, seed=12, reset_positions=True).make_batch(
                      TokenWindows(tokens, docs, torch.tensor([4, 9, 2])))):
        for row in range(3):
            assert not (torch.equal(batch.inputs[row], other.inputs[row])
                        and torch.equal(batch.labels[row], other.labels[row]))


@pytest.mark.parametrize("reset_positions", [False, True])
@pytest.mark.parametrize("name", ["clm", *NOISY])
def test_no_attention_across_documents_in_the_model(name, reset_positions):
    """Perturbing the tokens of one document leaves the logits of every other position
    (other documents, their sentinels and mode tokens, padding) bit for bit unchanged."""
    objective = make(name, reset_positions=reset_positions)
    cfg = ModelConfig(name="t", d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)
    model = materialize(build_model(cfg, vocab_size=objective.vocab_size,
                                    attention_backend="reference"), "cpu", seed=0)
    docs = torch.tensor([[0] * 15 + [1] * 12 + [2] * 22] * 4)
    tokens = torch.randint(0, VOCAB, (4, 49), generator=torch.Generator().manual_seed(2))
    other = tokens.clone()
    other[docs == 1] = (other[docs == 1] + 1) % VOCAB
    sample_ids = torch.tensor([0, 1, 2, 3])
    a_batch = objective.make_batch(TokenWindows(tokens, docs, sample_ids))
    b_batch = objective.make_batch(TokenWindows(other, docs, sample_ids))
    assert torch.equal(a_batch.mask.doc_ids, b_batch.mask.doc_ids)
    with torch.no_grad():
        a = model(a_batch.inputs, mask=a_batch.mask, positions=a_batch.positions)
        b = model(b_batch.inputs, mask=b_batch.mask, positions=b_batch.positions)
    outside = a_batch.mask.doc_ids != 1
    torch.testing.assert_close(a[outside], b[outside], rtol=0, atol=0)
    assert not torch.allclose(a[~outside], b[~outside])


@pytest.mark.parametrize("with_docs", [False, True])
@pytest.mark.parametrize("name", ["clm", *NOISY])
def test_every_query_has_a_key_and_ids_stay_in_the_vocabulary(name, with_docs):
    objective = make(name, reset_positions=with_docs)
    tokens = torch.randint(0, VOCAB, (64, 41), generator=torch.Generator().manual_seed(3))
    docs = packed_docs(64, 41) if with_docs else None
    batch = objective.make_batch(TokenWindows(tokens, docs, torch.arange(64)))
    assert batch.inputs.shape == batch.labels.shape == (64, 40)
    allowed = dense_mask(batch.mask, 64, 40, 40, "cpu")
    assert allowed.any(dim=-1).all()
    assert 0 <= int(batch.inputs.min()) and int(batch.inputs.max()) < objective.vocab_size
    targets = batch.labels[batch.labels != IGNORE_INDEX]
    assert 0 <= int(targets.min()) and int(targets.max()) < objective.vocab_size
    if batch.positions is not None:
        assert int(batch.positions.max()) < 40


def reconstruct(prefix: list[int], targets: list[int], sentinels: set[int]) -> list[int]:
    """The raw text a prefix-LM row encodes: each sentinel in the prefix replaced by the
    tokens that follow it in the targets (S mode: prefix then targets)."""
    if not targets or targets[0] not in sentinels:
        return prefix + targets
    groups, current = {}, None
    for t in targets:
        if t in sentinels:
            current = groups.setdefault(t, [])
        else:
            current.append(t)
    return [x for t in prefix for x in (groups[t] if t in sentinels else [t])]


@pytest.mark.parametrize("name", ["span", "ul2"])
def test_prefix_lm_rows_encode_the_window_and_predict_exactly_the_targets(name):
    objective = make(name)
    sentinels = {v for k, v in objective.token_ids.items() if k.startswith("<extra_id")}
    modes = {v for k, v in objective.token_ids.items() if not k.startswith("<extra_id")}
    tokens = torch.randint(0, VOCAB, (200, 65), generator=torch.Generator().manual_seed(4))
    batch = objective.make_batch(TokenWindows(tokens, None, torch.arange(200)))
    for row in range(200):
        inputs, labels = batch.inputs[row].tolist(), batch.labels[row].tolist()
        p = int(batch.mask.prefix_len[row])
        prefix = inputs[:p]
        n_targets = sum(lab != IGNORE_INDEX for lab in labels)
        targets = labels[p - 1 : p - 1 + n_targets]
        assert IGNORE_INDEX not in targets and labels[: p - 1] == [IGNORE_INDEX] * (p - 1)
        assert inputs[p : p - 1 + n_targets] == targets[:-1]  # teacher forcing
        assert inputs[p - 1 + n_targets :] == [PAD] * (64 - (p - 1 + n_targets))  # padding
        if prefix[0] in modes:
            prefix = prefix[1:]
        raw = reconstruct(prefix, targets, sentinels)
        assert raw == tokens[row, : len(raw)].tolist()
