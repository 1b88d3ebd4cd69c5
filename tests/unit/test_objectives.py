import numpy as np
import pytest
import torch

from triforge.models import ModelConfig, build_model, materialize
from triforge.trainer.data.loader import TokenWindows, WindowLoader
from triforge.trainer.data.sampler import GlobalSampler
from triforge.trainer.data.shards import TokenSplit
from triforge.trainer.objectives import (
    OBJECTIVES,
    ObjectiveConfig,
    build_objective,
    positions_by_id,
    positions_in_documents,
)

VOCAB, PAD = 258, 257


def clm(*, reset_positions: bool = False):
    return build_objective(ObjectiveConfig(), tokenizer_vocab=VOCAB, pad_id=PAD, seed=0,
                           reset_positions=reset_positions)


def test_clm_without_documents_is_plain_causal():
    tokens = torch.arange(12).view(2, 6)
    batch = clm().make_batch(TokenWindows(tokens))
    assert torch.equal(batch.inputs, tokens[:, :-1]) and torch.equal(batch.labels, tokens[:, 1:])
    assert batch.mask.is_plain_causal and batch.positions is None


def test_clm_with_documents_masks_and_restarts_positions():
    tokens = torch.arange(8)[None]
    docs = torch.tensor([[4, 4, 4, 5, 5, 6, 6, 6]])  # a window that starts mid-document
    batch = clm(reset_positions=True).make_batch(TokenWindows(tokens, docs))
    assert batch.mask.kind == "causal"
    assert batch.mask.doc_ids.tolist() == [[4, 4, 4, 5, 5, 6, 6]]
    assert batch.positions.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert batch.labels.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    kept = clm().make_batch(TokenWindows(tokens, docs))
    assert kept.positions is None and kept.mask.doc_ids is not None


def test_positions_in_documents_per_row():
    docs = torch.tensor([[0, 0, 1, 1, 1], [2, 3, 3, 3, 4]])
    assert positions_in_documents(docs).tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 2, 0]]


def test_positions_by_id_counts_earlier_tokens_of_the_same_id():
    # a rearranged row: doc 0's prefix, doc 1's prefix, then their targets, then padding (2)
    ids = torch.tensor([[0, 0, 1, 1, 0, 1, 1, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5, 5]])
    assert positions_by_id(ids).tolist() == [[0, 1, 0, 1, 2, 2, 3, 0, 1], list(range(9))]
    runs = torch.tensor([[0, 0, 1, 1, 1], [2, 3, 3, 3, 4]])
    assert torch.equal(positions_by_id(runs), positions_in_documents(runs))


def test_no_attention_across_documents_in_the_model():
    """Perturbing one document of a packed window leaves the others' logits unchanged."""
    cfg = ModelConfig(name="t", d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    model = materialize(build_model(cfg, vocab_size=64, attention_backend="sdpa"), "cpu", seed=0)
    docs = torch.tensor([[0] * 7 + [1] * 6 + [2] * 9])
    tokens = torch.randint(0, 64, (1, 22))
    objective = clm(reset_positions=True)
    batch = objective.make_batch(TokenWindows(tokens, docs))
    other = tokens.clone()
    other[0, 7:13] = (other[0, 7:13] + 1) % 64  # document 1 only
    batch2 = objective.make_batch(TokenWindows(other, docs))
    with torch.no_grad():
        a = model(batch.inputs, mask=batch.mask, positions=batch.positions)
        b = model(batch2.inputs, mask=batch2.mask, positions=batch2.positions)
    torch.testing.assert_close(a[0, :7], b[0, :7], rtol=0, atol=0)
    torch.testing.assert_close(a[0, 13:], b[0, 13:], rtol=0, atol=0)
    assert not torch.allclose(a[0, 7:12], b[0, 7:12])
    # with positions reset, document 2 sees the same logits as when it starts a window alone
    alone = other[:, 13:]
    with torch.no_grad():
        c = model(alone[:, :-1])
    torch.testing.assert_close(a[0, 13:], c[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"name": "foo"}, r"objective 'foo' is not one of \['clm', 'mlm', 'span', 'ul2'\]"),
        ({"mask_prob": 1.5}, r"^objective.mask_prob\(1.5\) must be in \(0, 1\)$"),
        ({"noise_density": 0.0}, r"^objective.noise_density\(0.0\) must be in \(0, 1\)$"),
        ({"ul2_x_noise_density": 1.0}, r"ul2_x_noise_density\(1.0\) must be in \(0, 1\)"),
        ({"mean_span": 0.5}, r"^objective.mean_span\(0.5\) must be >= 1$"),
        ({"num_sentinels": 0}, r"^objective.num_sentinels\(0\) must be >= 1$"),
        ({"ul2_weights": [1.0, 0.0]}, r"ul2_weights\(\[1.0, 0.0\]\) must be 3 weights for R/S/X"),
        ({"ul2_weights": [1.0, -1.0, 1.0]}, r"each >= 0"),
        ({"ul2_weights": [0.0, 0.0, 0.0]}, r"positive sum"),
    ],
)
def test_config_validation_names_the_field_and_the_rule(override, message):
    with pytest.raises(ValueError, match=message):
        ObjectiveConfig(**override).validate()


def test_defaults_validate_and_registry_matches_config_names():
    for name in OBJECTIVES:
        ObjectiveConfig(name=name).validate()
    assert sorted(OBJECTIVES) == ["clm", "mlm", "span", "ul2"]


def test_build_objective_validates_and_rejects_a_negative_seed():
    with pytest.raises(ValueError, match="mask_prob"):
        build_objective(ObjectiveConfig(name="mlm", mask_prob=0.0), tokenizer_vocab=VOCAB,
                        pad_id=PAD, seed=0)
    with pytest.raises(ValueError, match=r"seed\(-1\) must be >= 0"):
        build_objective(ObjectiveConfig(name="span"), tokenizer_vocab=VOCAB, pad_id=PAD, seed=-1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("clm", ()),
        ("mlm", ("<mask>",)),
        ("span", ("<extra_id_0>", "<extra_id_1>", "<extra_id_2>")),
        ("ul2", ("<extra_id_0>", "<extra_id_1>", "<extra_id_2>", "<R>", "<S>", "<X>")),
    ],
)
def test_special_tokens_follow_the_tokenizer_vocabulary_in_order(name, expected):
    cfg = ObjectiveConfig(name=name, num_sentinels=3)
    objective = build_objective(cfg, tokenizer_vocab=VOCAB, pad_id=PAD, seed=0)
    assert objective.name == name and objective.special_tokens == expected
    assert objective.token_ids == {t: VOCAB + i for i, t in enumerate(expected)}
    assert objective.vocab_size == VOCAB + len(expected)


@pytest.mark.parametrize("name", ["mlm", "span", "ul2"])
def test_noisy_objectives_need_sample_ids(name):
    objective = build_objective(ObjectiveConfig(name=name), tokenizer_vocab=VOCAB, pad_id=PAD,
                                seed=0)
    with pytest.raises(ValueError, match=f"objective '{name}' needs TokenWindows.sample_ids"):
        objective.make_batch(TokenWindows(torch.zeros(2, 33, dtype=torch.int64)))


def test_loader_batches_carry_their_sample_ids():
    split = TokenSplit(np.arange(100, dtype=np.uint16), np.array([0, 40], dtype=np.int64))
    loader = WindowLoader(split, 8, GlobalSampler(12, seed=0), document_ids=True)
    windows = loader.batch(np.array([5, 2, 9]))
    assert windows.sample_ids.dtype == torch.int64
    assert windows.sample_ids.tolist() == [5, 2, 9]
    assert windows.tokens[:, 0].tolist() == [40, 16, 72]
