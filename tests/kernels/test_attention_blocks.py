"""Attention blocks at given positions, and context parallelism's ring built from them.

1. The Triton kernel with queries and keys placed anywhere in a longer sequence
   (``AttentionMask.q_start``/``k_start``, unequal lengths) against the float64 reference
   of the same block, forward and backward, for every mask mode; the tolerance rule of
   test_attention_kernel.py (twice PyTorch's own error in the input dtype, plus 4 fp32 ulps).
2. The ring's math (parallel/context_parallel.py ``RingMath``) in one process emulating
   cp = 2 and 4 ranks, with both block implementations (Triton, PyTorch), against the
   unsplit float64 attention: outputs and dq, dk, dv put back in sequence order. Tolerance:
   fp32 inputs, RING_ULPS * cp ulps (tests/helpers/attention.py).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from tests.helpers.attention import DEVICE, RING_ULPS  # noqa: E402
from tests.helpers.attention import sequence_mask as _mask  # noqa: E402
from triforge.kernels.attention import AttentionMask, attention_reference  # noqa: E402
from triforge.kernels.attention.op import flash_attention  # noqa: E402
from triforge.parallel.context_parallel import (  # noqa: E402
    RingMath,
    chunk_ids,
    ring_block_impl,
    shard_sequence,
)

FLOOR_FP32_ULPS = 4.0  # as in test_attention_kernel.py
KINDS = ("causal", "full", "prefix")


def _grads(fn, q, k, v, dout, mask, **kw):
    leaves = [t.detach().to(DEVICE).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, mask, **kw)
    return (out.detach(), *torch.autograd.grad(out, leaves, dout.to(DEVICE, out.dtype)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("docs", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("s_q,s_k,q_start,k_start", [
    (24, 40, 40, 0),  # queries after all keys: wholly allowed under causal
    (33, 17, 0, 50),  # keys after the queries: causal allows nothing, prefix some
    (20, 20, 30, 30),  # the diagonal block of a longer sequence
    (17, 50, None, 0),  # default placement (queries at the end of the keys), s_q < s_k
])
def test_kernel_block_at_positions_matches_reference(kind, docs, dtype, s_q, s_k, q_start,
                                                     k_start):
    gen = torch.Generator().manual_seed(s_q * 100 + s_k)
    b, hq, hkv, d = 2, 2, 1, 32  # few heads: the interpreter runs per program
    total = max((q_start or 0) + s_q, k_start + s_k)
    mask = _mask(kind, docs, b, total, gen, q_start=q_start, k_start=k_start)
    if q_start is None:  # default placement: doc ids cover the keys
        mask = _mask(kind, docs, b, s_k, gen)
    q, dout = (torch.randn(b, hq, s_q, d, generator=gen).to(dtype) for _ in range(2))
    k, v = (torch.randn(b, hkv, s_k, d, generator=gen).to(dtype) for _ in range(2))
    ours = _grads(flash_attention, q, k, v, dout, mask)
    exact = _grads(attention_reference, *(t.double() for t in (q, k, v, dout)), mask)
    same_dtype = _grads(attention_reference, q, k, v, dout, mask, upcast=False)
    eps = torch.finfo(torch.float32).eps
    for name, got, ref, base in zip(("out", "dq", "dk", "dv"), ours, exact, same_dtype,
                                    strict=True):
        err = (got.double() - ref).abs().max().item()
        bound = 2 * (base.double() - ref).abs().max().item()
        bound += FLOOR_FP32_ULPS * eps * max(1.0, ref.abs().max().item())
        assert err <= bound, f"{name}: error {err:.2e} > {bound:.2e}"


def _unshard(parts: list[torch.Tensor], cp: int) -> torch.Tensor:
    """Per-rank (b, h, 2c, d) tensors back into sequence order (b, h, S, d)."""
    c = parts[0].shape[2] // 2
    out = torch.empty(*parts[0].shape[:2], 2 * cp * c, parts[0].shape[3], dtype=parts[0].dtype,
                      device=parts[0].device)
    for r, part in enumerate(parts):
        for j, chunk in enumerate(chunk_ids(cp, r)):
            out[:, :, chunk * c:(chunk + 1) * c] = part[:, :, j * c:(j + 1) * c]
    return out


def emulate_ring(q, k, v, dout, mask, cp: int, impl: str):
    """(out, dq, dk, dv) of ring attention, every cp rank run in turn in this process; the
    key/value gradients of each visit are added up at the chunk's owner, as the ring does."""
    shards = [[shard_sequence(t, cp, r, dim=2) for r in range(cp)] for t in (q, k, v, dout)]
    qs, ks, vs, ds = shards
    outs, dqs = [], []
    dks, dvs = [torch.zeros_like(t) for t in ks], [torch.zeros_like(t) for t in vs]
    for r in range(cp):
        ring = RingMath(cp, r, impl, 1.0 / math.sqrt(q.shape[-1]))
        visit = lambda i, r=r: ((r - i) % cp, ks[(r - i) % cp], vs[(r - i) % cp])  # noqa: E731
        merged = ring.forward(qs[r], visit, mask)
        outs.append(torch.cat([o for o, _ in merged], dim=2))
        dq = torch.zeros_like(qs[r])
        for i in range(cp):
            src, k_src, v_src = visit(i)
            dk, dv = ring.backward_visit(ds[r], qs[r], merged, src, k_src, v_src, mask, dq)
            dks[src] += dk
            dvs[src] += dv
        dqs.append(dq)
    return tuple(_unshard(parts, cp) for parts in (outs, dqs, dks, dvs))


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("cp", [2, 4])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("docs", [False, True])
def test_ring_matches_unsplit_attention(impl, cp, kind, docs):
    gen = torch.Generator().manual_seed(cp * 10 + len(kind))
    b, hq, hkv, seq, d = 2, 2, 1, 8 * cp, 16  # few heads: the interpreter runs per program
    q, dout = (torch.randn(b, hq, seq, d, generator=gen, dtype=torch.float64) for _ in range(2))
    k, v = (torch.randn(b, hkv, seq, d, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = _mask(kind, docs, b, seq, gen)
    exact = _grads(attention_reference, q, k, v, dout, mask)
    ring = emulate_ring(*(t.float().to(DEVICE) for t in (q, k, v, dout)), mask, cp, impl)
    eps = torch.finfo(torch.float32).eps
    for name, got, ref in zip(("out", "dq", "dk", "dv"), ring, exact, strict=True):
        err = (got.double().cpu() - ref.cpu()).abs().max().item()
        bound = RING_ULPS * cp * eps * max(1.0, ref.abs().max().item())
        assert err <= bound, f"{name}: error {err:.2e} > {bound:.2e}"


def test_causal_work_is_balanced_over_the_ring():
    """Head-tail chunks: under a causal mask every rank computes the same number of
    (chunk x chunk) blocks over a whole turn of the ring, 2 cp (the diagonal ones counting
    half), against up to 2 * (2 cp - 1) with plain contiguous chunks."""
    cp, mask = 4, AttentionMask("causal")
    for r in range(cp):
        ring = RingMath(cp, r, "torch", 1.0)
        blocks = [blk for src in range(cp) for _, _, blk in ring.pairs(src, mask, 1)]
        full = sum(1 for blk in blocks if blk.k_start < blk.q_start)
        diagonal = sum(1 for blk in blocks if blk.k_start == blk.q_start)
        assert (full, diagonal) == (2 * cp - 1, 2), (r, full, diagonal)


def test_backends_map_to_block_implementations():
    """The kernels where attention.backend asks for them (or ``auto`` on CUDA), the PyTorch
    block math otherwise; flash-attn cannot place blocks, which is a one-line refusal."""
    assert ring_block_impl("triton", "cpu") == ring_block_impl("auto", "cuda") == "triton"
    assert {ring_block_impl(b, "cpu") for b in ("auto", "sdpa", "reference")} == {"torch"}
    with pytest.raises(ValueError, match="attention.backend=flash_attn cannot compute"):
        ring_block_impl("flash_attn", "cuda")
