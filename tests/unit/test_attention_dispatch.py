import pytest
import torch

from triforge.kernels.attention import AttentionMask, attention, attention_reference, dense_mask


def masks(b: int, s: int):
    docs = torch.sort(torch.randint(0, 3, (b, s)), dim=-1).values
    prefix = torch.randint(0, s + 2, (b,))
    return {
        "causal": AttentionMask("causal"),
        "full": AttentionMask("full"),
        "prefix": AttentionMask("prefix", prefix_len=prefix),
        "causal+docs": AttentionMask("causal", doc_ids=docs),
        "full+docs": AttentionMask("full", doc_ids=docs),
        "prefix+docs": AttentionMask("prefix", prefix_len=prefix, doc_ids=docs),
    }


@pytest.mark.parametrize("name", list(masks(1, 4)))
def test_sdpa_matches_reference_for_every_mask(name):
    torch.manual_seed(0)
    b, s = 2, 19
    q = torch.randn(b, 4, s, 16, dtype=torch.float64)
    k, v = torch.randn(b, 2, s, 16, dtype=torch.float64), torch.randn(b, 2, s, 16, dtype=torch.float64)
    mask = masks(b, s)[name]
    torch.testing.assert_close(attention(q, k, v, mask, backend="sdpa"),
                               attention_reference(q, k, v, mask), rtol=1e-10, atol=1e-10)


def test_dense_mask_semantics():
    prefix = AttentionMask("prefix", prefix_len=torch.tensor([2]))
    allowed = dense_mask(prefix, 1, 4, 4, "cpu")[0, 0]
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    assert torch.equal(allowed, expected)
    docs = AttentionMask("full", doc_ids=torch.tensor([[0, 0, 1, 1]]))
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]).bool()
    assert torch.equal(dense_mask(docs, 1, 4, 4, "cpu")[0, 0], expected)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_documents_do_not_see_each_other(backend):
    torch.manual_seed(1)
    docs = torch.tensor([[0] * 6 + [1] * 5 + [2] * 4])
    mask = AttentionMask("full", doc_ids=docs)
    q, k, v = (torch.randn(1, 2, 15, 8) for _ in range(3))
    out = attention(q, k, v, mask, backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 6:11] += 1.0
    v2[:, :, 6:11] -= 2.0  # perturb document 1 only
    out2 = attention(q, k2, v2, mask, backend=backend)
    torch.testing.assert_close(out[:, :, :6], out2[:, :, :6], rtol=0, atol=0)
    torch.testing.assert_close(out[:, :, 11:], out2[:, :, 11:], rtol=0, atol=0)
    assert not torch.allclose(out[:, :, 6:11], out2[:, :, 6:11])


def test_unknown_backend_and_bad_mask_are_rejected():
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match="attention.backend='nope'"):
        attention(q, q, q, AttentionMask(), backend="nope")
    with pytest.raises(ValueError, match="prefix_len is required"):
        AttentionMask("prefix")


def test_flash_attn_backend_is_a_startup_error_when_missing_or_inexpressible():
    import importlib.util

    from triforge.errors import ConfigError
    from triforge.launcher.config import load_config

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ConfigError, match="needs the 'flash_attn' package"):
            load_config(["attention.backend=flash_attn"])
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="cannot express a 'prefix' mask"):
        attention(q, q, q, AttentionMask("prefix", prefix_len=torch.tensor([2])),
                  backend="flash_attn")



def _varlen_by_its_contract(calls):
    """flash_attn_varlen_func as flash-attn documents it: tokens (total, heads, d), each
    [cu[i], cu[i+1]) a sequence of its own, causal within it. Computed with our reference;
    the real library runs in tests/kernels on a GPU that has it."""

    def varlen(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=None, causal=False):
        calls.append((cu_q.tolist(), max_q, causal))
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and max_q == max_k
        segments = []
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
            seq = [t[a:b].transpose(0, 1)[None] for t in (q, k, v)]  # (1, heads, len, d)
            out = attention_reference(*seq, AttentionMask("causal" if causal else "full"),
                                      scale=softmax_scale)
            segments.append(out[0].transpose(0, 1))
        return torch.cat(segments)

    return varlen


@pytest.mark.parametrize("kind", ["causal", "full"])
def test_flash_attn_takes_document_masks_as_variable_length_sequences(monkeypatch, kind):
    import sys
    import types

    calls: list = []
    fake = types.ModuleType("flash_attn")
    fake.flash_attn_varlen_func = _varlen_by_its_contract(calls)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 7, 8, generator=g)
    k, v = torch.randn(2, 2, 7, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g)
    docs = torch.tensor([[0, 0, 0, 1, 1, 2, 2], [2, 2, 2, 2, 2, 2, 6]])  # rows split documents
    mask = AttentionMask(kind, doc_ids=docs)
    out = attention(q, k, v, mask, backend="flash_attn", scale=0.3)
    torch.testing.assert_close(out, attention_reference(q, k, v, mask, scale=0.3))
    assert calls == [([0, 3, 5, 7, 13, 14], 6, kind == "causal")]
