"""flash-attn's variable-length kernel behind attention.backend=flash_attn with document
masks, against the float64 reference (GPU with flash-attn only; the glue is tested on any
machine in tests/unit/test_attention_dispatch.py). Tolerance rule: STYLE.md §10."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from triforge.kernels.attention import AttentionMask, attention, attention_reference

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
    reason="needs a CUDA GPU with flash-attn installed")


@pytest.mark.parametrize("kind", ["causal", "full"])
def test_document_masks_through_flash_attn_varlen(kind):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 256, 64, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 256, 64, generator=g, dtype=torch.float64) for _ in range(2))
    docs = torch.cat([torch.zeros(2, 100), torch.ones(2, 56), torch.full((2, 100), 2)], 1)
    mask = AttentionMask(kind, doc_ids=docs.long().cuda())
    exact = attention_reference(q, k, v, AttentionMask(kind, doc_ids=docs.long()))
    low = [t.cuda().to(torch.bfloat16) for t in (q, k, v)]
    ours = attention(*low, mask, backend="flash_attn").double().cpu()
    same = attention_reference(*low, mask).double().cpu()
    unit = torch.finfo(torch.bfloat16).eps / 2 * exact.abs().max().item()
    assert (ours - exact).abs().max() <= 2 * (same - exact).abs().max() + unit
