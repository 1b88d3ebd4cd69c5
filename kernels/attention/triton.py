"""FlashAttention-2-style Triton kernels (forward, backward) and their launchers.

Layout: q (b, h_q, s_q, d), k/v (b, h_kv, s_k, d) with any strides whose last one is 1; the
outputs o, dq (b, h_q, s_q, d) and dk, dv (b, h_kv, s_k, d) are contiguous. The mask is
judged at positions (``AttentionMask.q_start``/``k_start``), so one call can be one block of
a longer sequence: context parallelism's ring (parallel/context_parallel.py) merges blocks
by their log-sum-exp and passes the global output and log-sum-exp to each block's backward.
Forward: online softmax over key tiles, storing the per-row log-sum-exp in base 2
(``lse2 = log2(sum(exp2(s * scale * log2 e)))``, +inf for a row with no allowed key, so that
the backward's ``exp2(s - lse2)`` gives 0 there). Backward (deterministic, no atomics):
delta = rowsum(dO * O); one kernel per key tile for dK/dV that loops over the query tiles of
every query head of its kv group; one kernel per query tile for dQ that loops over key tiles.

Tile skipping: ``tile_loop_bounds`` classifies every (query tile, key tile) pair from the mask
spec alone (positions, prefix lengths, per-tile min/max doc ids) as possibly-allowed or
fully-allowed. Each program loops only over [lo, hi) -- the span of possibly-allowed tiles --
and skips the elementwise mask on the run [ulo, uhi) of fully-allowed tiles. The spans are
exact for causal/full/prefix and for non-decreasing doc ids (packed windows); for arbitrary
ids they are still safe, some masked tiles are then computed (and masked elementwise).

Outputs are allocated filled with NaN, not empty: an element the kernels fail to write shows
up in every test. It costs one write pass over the outputs, small next to O(s^2) work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .mask import AttentionMask
from .tiles import tile_loop_bounds

_LOG2E = 1.4426950408889634
_MASK_KIND = {"full": 0, "causal": 1, "prefix": 2}
_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@dataclass(frozen=True)
class KernelBlocks:
    """Tile sizes of one kernel: block_m query rows by block_n key rows."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class AttentionBlocks:
    """Tile sizes of the forward, the dK/dV kernel and the dQ kernel."""

    fwd: KernelBlocks
    dkv: KernelBlocks
    dq: KernelBlocks


def default_blocks(device: torch.device, head_dim: int, dtype: torch.dtype) -> AttentionBlocks:
    """Tile sizes for ``device``: GPU defaults, or small unequal tiles under the interpreter.

    On CPU (interpreter) the tiles are 16/32 so that tests at seq 17..257 run many tiles, both
    tile orientations and tile skipping; speed is irrelevant there. GPU sizes were picked so
    that ptxas reports no register spills for sm_90 with 16-bit inputs (checked by compiling
    offline); they are untuned starting points, bench/attention.py is where to tune them.
    """
    if device.type != "cuda":
        return AttentionBlocks(KernelBlocks(16, 16), KernelBlocks(16, 32), KernelBlocks(32, 16))
    if dtype == torch.float32:  # exact fp32 dots run on CUDA cores: a correctness path only
        small = KernelBlocks(32, 32, 4, 1)
        return AttentionBlocks(small, small, small)
    # dK/dV keeps a wide key tile resident and streams narrow query tiles; dQ the reverse
    # (as in the Triton fused-attention tutorial).
    if head_dim <= 64:
        fwd, dkv, dq = (128, 64, 8), (32, 128, 8), (128, 32, 4)
    elif head_dim <= 128:
        fwd, dkv, dq = (64, 64, 4), (32, 128, 8), (128, 32, 8)
    else:  # these still spill registers on sm_90: correct but untuned
        fwd, dkv, dq = (64, 32, 8, 2), (32, 64, 8, 2), (64, 32, 8, 2)
    return AttentionBlocks(KernelBlocks(*fwd), KernelBlocks(*dkv), KernelBlocks(*dq))


# Kernel code keeps compact argument lists (the formatter would give each of ~30 arguments
# its own line).
# fmt: off
@triton.jit
def _load_rows(base, offs_s, offs_d, stride_s, seq, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               BOUNDED: tl.constexpr):
    """(rows, BLOCK_D) tile; out-of-range rows (when BOUNDED) and padded columns read 0."""
    ptrs = base + offs_s[:, None] * stride_s + offs_d[None, :]
    if BOUNDED:
        x = tl.load(ptrs, mask=(offs_s[:, None] < seq) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    elif BLOCK_D == HEAD_DIM:
        x = tl.load(ptrs)  # interior tile: unmasked, so loads stay vectorized
    else:
        x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def _store_rows(base, offs_s, offs_d, seq, value, HEAD_DIM: tl.constexpr):
    """Store into a contiguous (seq, HEAD_DIM) slab, rows past seq and padded columns dropped."""
    ptrs = base + offs_s[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(ptrs, value, mask=(offs_s[:, None] < seq) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _allowed(q_idx, k_idx, seq_q, seq_k, q_start, k_start, prefix, docs_b, KIND: tl.constexpr,
             HAS_DOCS: tl.constexpr):
    """Elementwise mask spec (mask.dense_mask) on a tile; q_idx and k_idx are row indices
    already shaped to broadcast, (M, 1) x (1, N) or (1, M) x (N, 1). The mask is judged at
    positions q_start + q_idx and k_start + k_idx."""
    ok = (q_idx < seq_q) & (k_idx < seq_k)
    q_pos, k_pos = q_idx + q_start, k_idx + k_start
    if KIND == 1:
        ok = ok & (k_pos <= q_pos)
    if KIND == 2:
        ok = ok & ((k_pos <= q_pos) | (k_pos < prefix))
    if HAS_DOCS:
        q_doc = tl.load(docs_b + q_pos, mask=q_idx < seq_q, other=0)
        k_doc = tl.load(docs_b + k_pos, mask=k_idx < seq_k, other=0)
        ok = ok & (q_doc == k_doc)
    return ok


@triton.jit
def _round(x, dtype: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    """x rounded to ``dtype`` (round to nearest even, as GPUs convert). Under the interpreter,
    whose fp32->bf16 cast truncates, EMULATE_RTNE rounds with integer ops instead and returns
    fp32 holding the bf16 value (so a later cast to bf16 is exact). A wider ``dtype`` (fp32
    block outputs and gradients, see the launchers) is not rounded."""
    if EMULATE_RTNE and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        y = bits.to(tl.float32, bitcast=True)
    else:
        y = x.to(dtype)
    return y


@triton.jit
def _fwd_loop(acc, l_i, m_i, q, k_b, v_b, sk_s, sv_s, offs_m, offs_d, docs_b, prefix, seq_q, seq_k,
              q_start, k_start, qk_scale, start, end, HEAD_DIM: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, KIND: tl.constexpr,
              HAS_DOCS: tl.constexpr, MASKED: tl.constexpr, DOT: tl.constexpr, RTNE: tl.constexpr,
              PRECISION: tl.constexpr):
    """Online-softmax update of (acc, l_i, m_i) with the key tiles in [start, end)."""
    in_dtype = k_b.dtype.element_ty
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_b, offs_n, offs_d, sk_s, seq_k, HEAD_DIM, BLOCK_D, MASKED).to(DOT)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            ok = _allowed(offs_m[:, None], offs_n[None, :], seq_q, seq_k, q_start, k_start, prefix,
                          docs_b, KIND, HAS_DOCS)
            qk = tl.where(ok, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row that has seen no allowed key yet keeps m = -inf; exp2(-inf - -inf) is NaN.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_b, offs_n, offs_d, sv_s, seq_k, HEAD_DIM, BLOCK_D, MASKED).to(DOT)
        # p is rounded to the input dtype, as tensor cores consume it (a no-op for fp32).
        acc = tl.dot(_round(p, in_dtype, RTNE).to(DOT), v, acc * alpha[:, None],
                     input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, OUT, LSE, PREFIX, DOCS, BOUNDS, sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b,
              sv_h, sv_s, bounds_sb, n_heads, seq_q, seq_k, q_start, k_start, docs_len, qk_scale,
              GROUP: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, KIND: tl.constexpr, HAS_DOCS: tl.constexpr, DOT: tl.constexpr,
              RTNE: tl.constexpr, PRECISION: tl.constexpr):
    tile_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // n_heads, bh % n_heads
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * sq_b + h * sq_h, offs_m, offs_d, sq_s, seq_q, HEAD_DIM, BLOCK_D, True)
    q = q.to(DOT)
    k_b = K + b * sk_b + (h // GROUP) * sk_h
    v_b = V + b * sv_b + (h // GROUP) * sv_h
    docs_b = DOCS + b * docs_len
    prefix = 0
    if KIND == 2:
        prefix = tl.load(PREFIX + b)
    bounds = BOUNDS + b * bounds_sb + tile_m * 4
    lo, ulo, uhi, hi = tl.load(bounds), tl.load(bounds + 1), tl.load(bounds + 2), tl.load(bounds + 3)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Masked tiles before and after the run of fully allowed tiles (see tile_loop_bounds).
    for part in tl.static_range(3):
        start = lo if part == 0 else (ulo if part == 1 else uhi)
        end = ulo if part == 0 else (uhi if part == 1 else hi)
        acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_b, v_b, sk_s, sv_s, offs_m, offs_d, docs_b,
                                  prefix, seq_q, seq_k, q_start, k_start, qk_scale, start, end,
                                  HEAD_DIM, BLOCK_D, BLOCK_N, KIND, HAS_DOCS, part != 1, DOT,
                                  RTNE, PRECISION)
    empty = l_i == 0.0  # no allowed key: the spec says output 0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    out = _round(out, OUT.dtype.element_ty, RTNE).to(OUT.dtype.element_ty)
    _store_rows(OUT + bh * seq_q * HEAD_DIM, offs_m, offs_d, seq_q, out, HEAD_DIM)
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + bh * seq_q + offs_m, lse, mask=offs_m < seq_q)


@triton.jit
def _attn_bwd_delta(OUT, DO, DELTA, seq, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O), the softmax-backward correction shared by dK and dQ."""
    bh = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_rows(OUT + bh * seq * HEAD_DIM, offs_m, offs_d, HEAD_DIM, seq, HEAD_DIM, BLOCK_D,
                   True)
    do = _load_rows(DO + bh * seq * HEAD_DIM, offs_m, offs_d, HEAD_DIM, seq, HEAD_DIM, BLOCK_D, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * seq + offs_m, delta, mask=offs_m < seq)


@triton.jit
def _dkv_loop(dk, dv, k, v, q_b, do_b, lse_b, delta_b, sq_s, offs_n, offs_d, docs_b, prefix, seq_q,
              seq_k, q_start, k_start, qk_scale, start, end, HEAD_DIM: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, KIND: tl.constexpr,
              HAS_DOCS: tl.constexpr, MASKED: tl.constexpr, DOT: tl.constexpr, RTNE: tl.constexpr,
              PRECISION: tl.constexpr):
    """Accumulate dK, dV of one key tile over the query tiles in [start, end) of one head."""
    in_dtype = q_b.dtype.element_ty
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(q_b, offs_m, offs_d, sq_s, seq_q, HEAD_DIM, BLOCK_D, MASKED).to(DOT)
        do = _load_rows(do_b, offs_m, offs_d, HEAD_DIM, seq_q, HEAD_DIM, BLOCK_D, MASKED).to(DOT)
        if MASKED:
            lse = tl.load(lse_b + offs_m, mask=offs_m < seq_q, other=float("inf"))
            delta = tl.load(delta_b + offs_m, mask=offs_m < seq_q, other=0.0)
        else:
            lse = tl.load(lse_b + offs_m)
            delta = tl.load(delta_b + offs_m)
        # Tiles are (keys, queries) so dK and dV accumulate without transposing the result.
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
        p_t = tl.math.exp2(qk_t - lse[None, :])
        if MASKED:
            ok = _allowed(offs_m[None, :], offs_n[:, None], seq_q, seq_k, q_start, k_start, prefix,
                          docs_b, KIND, HAS_DOCS)
            p_t = tl.where(ok, p_t, 0.0)
        dv = tl.dot(_round(p_t, in_dtype, RTNE).to(DOT), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(_round(ds_t, in_dtype, RTNE).to(DOT), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkv(Q, K, V, DO, LSE, DELTA, DK, DV, PREFIX, DOCS, BOUNDS, sq_b, sq_h, sq_s, sk_b,
                  sk_h, sk_s, sv_b, sv_h, sv_s, bounds_sb, n_kv_heads, seq_q, seq_k, q_start, k_start,
                  docs_len, qk_scale, scale,
                  GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KIND: tl.constexpr,
                  HAS_DOCS: tl.constexpr, DOT: tl.constexpr, RTNE: tl.constexpr,
                  PRECISION: tl.constexpr):
    tile_n = tl.program_id(0)
    bkv = tl.program_id(1).to(tl.int64)
    b, kvh = bkv // n_kv_heads, bkv % n_kv_heads
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K + b * sk_b + kvh * sk_h, offs_n, offs_d, sk_s, seq_k, HEAD_DIM, BLOCK_D, True)
    v = _load_rows(V + b * sv_b + kvh * sv_h, offs_n, offs_d, sv_s, seq_k, HEAD_DIM, BLOCK_D, True)
    k, v = k.to(DOT), v.to(DOT)
    docs_b = DOCS + b * docs_len
    prefix = 0
    if KIND == 2:
        prefix = tl.load(PREFIX + b)
    bounds = BOUNDS + b * bounds_sb + tile_n * 4
    lo, ulo, uhi, hi = tl.load(bounds), tl.load(bounds + 1), tl.load(bounds + 2), tl.load(bounds + 3)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # The kv head's gradient sums over its query heads: one program does the whole sum in a
    # fixed order, so GQA needs no atomics and stays deterministic.
    for g in range(GROUP):
        bh = bkv * GROUP + g  # (b, h_q) flat index of query head kvh * GROUP + g
        q_b = Q + b * sq_b + (kvh * GROUP + g) * sq_h
        do_b, lse_b, delta_b = DO + bh * seq_q * HEAD_DIM, LSE + bh * seq_q, DELTA + bh * seq_q
        for part in tl.static_range(3):
            start = lo if part == 0 else (ulo if part == 1 else uhi)
            end = ulo if part == 0 else (uhi if part == 1 else hi)
            dk, dv = _dkv_loop(dk, dv, k, v, q_b, do_b, lse_b, delta_b, sq_s, offs_n, offs_d,
                               docs_b, prefix, seq_q, seq_k, q_start, k_start, qk_scale, start,
                               end, HEAD_DIM, BLOCK_D, BLOCK_M, KIND, HAS_DOCS, part != 1, DOT,
                               RTNE, PRECISION)
    dk = _round(dk * scale, DK.dtype.element_ty, RTNE).to(DK.dtype.element_ty)
    dv = _round(dv, DV.dtype.element_ty, RTNE).to(DV.dtype.element_ty)
    _store_rows(DK + bkv * seq_k * HEAD_DIM, offs_n, offs_d, seq_k, dk, HEAD_DIM)
    _store_rows(DV + bkv * seq_k * HEAD_DIM, offs_n, offs_d, seq_k, dv, HEAD_DIM)


@triton.jit
def _dq_loop(dq, q, do, lse, delta, k_b, v_b, sk_s, sv_s, offs_m, offs_d, docs_b, prefix, seq_q,
             seq_k, q_start, k_start, qk_scale, start, end, HEAD_DIM: tl.constexpr,
             BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, KIND: tl.constexpr,
             HAS_DOCS: tl.constexpr, MASKED: tl.constexpr, DOT: tl.constexpr, RTNE: tl.constexpr,
             PRECISION: tl.constexpr):
    """Accumulate dQ of one query tile over the key tiles in [start, end)."""
    in_dtype = k_b.dtype.element_ty
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_b, offs_n, offs_d, sk_s, seq_k, HEAD_DIM, BLOCK_D, MASKED).to(DOT)
        v = _load_rows(v_b, offs_n, offs_d, sv_s, seq_k, HEAD_DIM, BLOCK_D, MASKED).to(DOT)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse[:, None])
        if MASKED:
            ok = _allowed(offs_m[:, None], offs_n[None, :], seq_q, seq_k, q_start, k_start, prefix,
                          docs_b, KIND, HAS_DOCS)
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(_round(ds, in_dtype, RTNE).to(DOT), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, PREFIX, DOCS, BOUNDS, sq_b, sq_h, sq_s, sk_b, sk_h,
                 sk_s, sv_b, sv_h, sv_s, bounds_sb, n_heads, seq_q, seq_k, q_start, k_start, docs_len,
                 qk_scale, scale,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KIND: tl.constexpr,
                 HAS_DOCS: tl.constexpr, DOT: tl.constexpr, RTNE: tl.constexpr,
                 PRECISION: tl.constexpr):
    tile_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // n_heads, bh % n_heads
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * sq_b + h * sq_h, offs_m, offs_d, sq_s, seq_q, HEAD_DIM, BLOCK_D, True)
    do = _load_rows(DO + bh * seq_q * HEAD_DIM, offs_m, offs_d, HEAD_DIM, seq_q, HEAD_DIM, BLOCK_D,
                    True)
    q, do = q.to(DOT), do.to(DOT)
    lse = tl.load(LSE + bh * seq_q + offs_m, mask=offs_m < seq_q, other=float("inf"))
    delta = tl.load(DELTA + bh * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
    k_b = K + b * sk_b + (h // GROUP) * sk_h
    v_b = V + b * sv_b + (h // GROUP) * sv_h
    docs_b = DOCS + b * docs_len
    prefix = 0
    if KIND == 2:
        prefix = tl.load(PREFIX + b)
    bounds = BOUNDS + b * bounds_sb + tile_m * 4
    lo, ulo, uhi, hi = tl.load(bounds), tl.load(bounds + 1), tl.load(bounds + 2), tl.load(bounds + 3)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for part in tl.static_range(3):
        start = lo if part == 0 else (ulo if part == 1 else uhi)
        end = ulo if part == 0 else (uhi if part == 1 else hi)
        dq = _dq_loop(dq, q, do, lse, delta, k_b, v_b, sk_s, sv_s, offs_m, offs_d, docs_b, prefix,
                      seq_q, seq_k, q_start, k_start, qk_scale, start, end, HEAD_DIM, BLOCK_D,
                      BLOCK_N, KIND, HAS_DOCS, part != 1, DOT, RTNE, PRECISION)
    dq = _round(dq * scale, DQ.dtype.element_ty, RTNE).to(DQ.dtype.element_ty)
    _store_rows(DQ + bh * seq_q * HEAD_DIM, offs_m, offs_d, seq_q, dq, HEAD_DIM)
# fmt: on


def _interpreted() -> bool:
    # Decided when the kernels were decorated (TRITON_INTERPRET at import), not at call time.
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_attn_fwd, InterpretedFunction)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> None:
    assert q.dim() == 4, f"q must be (batch, heads, seq, head_dim), got shape {tuple(q.shape)}"
    b, h_q, s, d = q.shape
    s_k = k.shape[2]
    assert k.shape == v.shape and k.dim() == 4, f"k{tuple(k.shape)} and v{tuple(v.shape)} differ"
    assert (k.shape[0], k.shape[3]) == (b, d), (
        f"k{tuple(k.shape)} must be (b={b}, h_kv, s_k, d={d}) like q{tuple(q.shape)}"
    )
    assert h_q % k.shape[1] == 0, f"kv heads({k.shape[1]}) must divide query heads({h_q})"
    assert q.dtype == k.dtype == v.dtype, f"q/k/v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}"
    assert q.dtype in (torch.float32, torch.bfloat16, torch.float16), f"unsupported {q.dtype}"
    assert all(t.stride(-1) == 1 for t in (q, k, v)), "q, k, v need stride 1 along head_dim"
    assert min(s, s_k) >= 1 and 1 <= d <= 256, (
        f"need seq >= 1 and head_dim in [1, 256], got {s}, {s_k}, {d}")
    assert b * h_q < 65536, f"batch({b}) * heads({h_q}) must be < 65536 (grid axis 1 limit)"
    # Row offsets inside one (batch, head) slab are int32 in the kernels.
    assert max(t.stride(2) for t in (q, k, v)) * max(s, s_k) < 2**31, (
        "seq * row stride must be < 2**31")
    assert q.device.type == "cuda" or _interpreted(), (
        f"Triton attention got {q.device} tensors: it needs CUDA, or TRITON_INTERPRET=1 set "
        "before triforge.kernels.attention.triton is imported"
    )
    if mask.prefix_len is not None:
        assert tuple(mask.prefix_len.shape) == (b,), f"prefix_len must be ({b},)"
    q_start, k_start = mask.starts(s, s_k)
    assert q_start >= 0 and k_start >= 0, f"positions start at {q_start}, {k_start}: need >= 0"
    if mask.doc_ids is not None:
        end = max(q_start + s, k_start + s_k)
        assert mask.doc_ids.dim() == 2 and mask.doc_ids.shape[0] == b, (
            f"doc_ids must be ({b}, L), got {tuple(mask.doc_ids.shape)}")
        assert mask.doc_ids.shape[1] >= end, f"doc_ids must cover positions 0..{end - 1}"


def _launch_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask):
    """Positional tensors (prefix, docs), q/k/v strides, then the sizes (s_q, s_k, q_start,
    k_start, docs row length), and constexprs shared by all kernels."""
    dummy = torch.zeros(1, dtype=torch.int32, device=q.device)  # never read when unused
    prefix = dummy if mask.prefix_len is None else mask.prefix_len.to(q.device, torch.int32)
    prefix = prefix.contiguous()
    docs = dummy if mask.doc_ids is None else mask.doc_ids.to(q.device).contiguous()
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    d = q.shape[-1]
    s_q, s_k = q.shape[2], k.shape[2]
    sizes = (s_q, s_k, *mask.starts(s_q, s_k), docs.shape[-1] if mask.doc_ids is not None else 0)
    emulate_bf16 = _interpreted() and q.dtype == torch.bfloat16
    consts = dict(
        GROUP=q.shape[1] // k.shape[1],
        HEAD_DIM=d,
        BLOCK_D=max(16, triton.next_power_of_2(d)),  # tl.dot needs dims >= 16
        KIND=_MASK_KIND[mask.kind],
        HAS_DOCS=mask.doc_ids is not None,
        # The interpreter's tl.dot multiplies bf16 bit patterns (triton-lang/triton#11584) and
        # its fp32->bf16 cast truncates: there, bf16 tiles are widened (exactly) to fp32, which
        # gives the same products, and roundings to bf16 are done by hand (see _round).
        DOT=tl.float32 if emulate_bf16 else _TL_DTYPE[q.dtype],
        RTNE=emulate_bf16,
        # fp32 inputs must not be truncated to tf32: the tests hold fp32 to fp32 accuracy.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return (prefix, docs), strides, sizes, consts


def _bounds(mask, seq_q, seq_k, blocks: KernelBlocks, *, outer: str, device):
    bounds = tile_loop_bounds(mask, seq_q, seq_k, blocks.block_m, blocks.block_n, outer=outer,
                              device=device)
    # Masks without per-sequence data give the same bounds for every batch row: stride 0.
    return bounds, (bounds.stride(0) if bounds.shape[0] > 1 else 0)


def _tile_kwargs(cfg: KernelBlocks, consts: dict) -> dict:
    tiles = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n)
    return dict(consts, **tiles, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def attention_forward(
    q, k, v, mask: AttentionMask, *, scale: float, blocks: AttentionBlocks | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns out (b, h_q, s_q, d) contiguous in q's dtype (or ``out_dtype``: fp32 for a
    block whose output is merged with others) and lse2 (b, h_q, s_q) fp32 (base 2)."""
    _check_inputs(q, k, v, mask)
    b, h_q, s_q, d = q.shape
    cfg = (blocks or default_blocks(q.device, d, q.dtype)).fwd
    (prefix, docs), strides, sizes, consts = _launch_args(q, k, v, mask)
    bounds, bounds_sb = _bounds(mask, s_q, k.shape[2], cfg, outer="query", device=q.device)
    out = torch.full((b, h_q, s_q, d), math.nan, dtype=out_dtype or q.dtype, device=q.device)
    lse = torch.full((b, h_q, s_q), math.nan, dtype=torch.float32, device=q.device)
    tensors = (q, k, v, out, lse, prefix, docs, bounds)
    _attn_fwd[(triton.cdiv(s_q, cfg.block_m), b * h_q)](
        *tensors, *strides, bounds_sb, h_q, *sizes, scale * _LOG2E, **_tile_kwargs(cfg, consts)
    )
    return out, lse


def attention_backward(
    dout,
    q,
    k,
    v,
    out,
    lse,
    mask: AttentionMask,
    *,
    scale: float,
    blocks: AttentionBlocks | None = None,
    grad_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv), contiguous, in the dtypes of q, k, v (or ``grad_dtype``: fp32
    for a block whose gradients are summed with others); ``dout`` is made contiguous.

    ``out`` and ``lse`` are those of the whole attention the block is part of: the
    probabilities ``exp2(s - lse)`` and ``delta = rowsum(dout * out)`` are then the global
    ones, so the gradients of the blocks add up to the gradient of the whole."""
    _check_inputs(q, k, v, mask)
    b, h_q, s_q, d = q.shape
    h_kv, s_k = k.shape[1], k.shape[2]
    assert dout.shape == out.shape == q.shape, f"dout{tuple(dout.shape)} must be q's shape"
    assert out.is_contiguous() and lse.shape == (b, h_q, s_q), "out, lse: from attention_forward"
    dout = dout.contiguous()
    blocks = blocks or default_blocks(q.device, d, q.dtype)
    (prefix, docs), strides, sizes, consts = _launch_args(q, k, v, mask)
    delta = torch.full((b, h_q, s_q), math.nan, dtype=torch.float32, device=q.device)
    _attn_bwd_delta[(triton.cdiv(s_q, blocks.dq.block_m), b * h_q)](
        out, dout, delta, s_q, HEAD_DIM=d, BLOCK_D=consts["BLOCK_D"], BLOCK_M=blocks.dq.block_m
    )
    dq, dk, dv = (torch.full(t.shape, math.nan, dtype=grad_dtype or t.dtype, device=t.device)
                  for t in (q, k, v))
    cfg = blocks.dkv
    bounds, bounds_sb = _bounds(mask, s_q, s_k, cfg, outer="key", device=q.device)
    tensors = (q, k, v, dout, lse, delta, dk, dv, prefix, docs, bounds)
    _attn_bwd_dkv[(triton.cdiv(s_k, cfg.block_n), b * h_kv)](
        *tensors, *strides, bounds_sb, h_kv, *sizes, scale * _LOG2E, scale,
        **_tile_kwargs(cfg, consts)
    )
    cfg = blocks.dq
    bounds, bounds_sb = _bounds(mask, s_q, s_k, cfg, outer="query", device=q.device)
    tensors = (q, k, v, dout, lse, delta, dq, prefix, docs, bounds)
    _attn_bwd_dq[(triton.cdiv(s_q, cfg.block_m), b * h_q)](
        *tensors, *strides, bounds_sb, h_q, *sizes, scale * _LOG2E, scale,
        **_tile_kwargs(cfg, consts)
    )
    return dq, dk, dv
