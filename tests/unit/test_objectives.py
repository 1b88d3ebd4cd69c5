import torch

from triforge.models import ModelConfig, build_model, materialize
from triforge.trainer.data.loader import TokenWindows
from triforge.trainer.objectives import build_objective, positions_in_documents


def test_clm_without_documents_is_plain_causal():
    tokens = torch.arange(12).view(2, 6)
    batch = build_objective("clm").make_batch(TokenWindows(tokens))
    assert torch.equal(batch.inputs, tokens[:, :-1]) and torch.equal(batch.labels, tokens[:, 1:])
    assert batch.mask.is_plain_causal and batch.positions is None


def test_clm_with_documents_masks_and_restarts_positions():
    tokens = torch.arange(8)[None]
    docs = torch.tensor([[4, 4, 4, 5, 5, 6, 6, 6]])  # a window that starts mid-document
    batch = build_objective("clm", reset_positions=True).make_batch(TokenWindows(tokens, docs))
    assert batch.mask.kind == "causal"
    assert batch.mask.doc_ids.tolist() == [[4, 4, 4, 5, 5, 6, 6]]
    assert batch.positions.tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert batch.labels.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    kept = build_objective("clm").make_batch(TokenWindows(tokens, docs))
    assert kept.positions is None and kept.mask.doc_ids is not None


def test_positions_in_documents_per_row():
    docs = torch.tensor([[0, 0, 1, 1, 1], [2, 3, 3, 3, 4]])
    assert positions_in_documents(docs).tolist() == [[0, 1, 0, 1, 2], [0, 0, 1, 2, 0]]


def test_no_attention_across_documents_in_the_model():
    """Perturbing one document of a packed window leaves the others' logits unchanged."""
    cfg = ModelConfig(name="t", d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    model = materialize(build_model(cfg, vocab_size=64, attention_backend="sdpa"), "cpu", seed=0)
    docs = torch.tensor([[0] * 7 + [1] * 6 + [2] * 9])
    tokens = torch.randint(0, 64, (1, 22))
    objective = build_objective("clm", reset_positions=True)
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
