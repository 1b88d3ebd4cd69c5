"""Triton kernels of MoE routing (the spec is reference.py) and their launchers.

- gating: one program per block of tokens holds all E scores of its rows; the top k come from
  k rounds of argmax (ties to the lowest index, as the reference's stable sort) and masking.
  ``tl.topk`` is not used: it returns values only. The backward recomputes the scores from
  the logits and applies the chain rule of renormalization and softmax (or sigmoid) per row.
  Per-expert counts are an integer ``tl.atomic_add`` histogram (exact in any order).
- permute / combine: one program per token loops over the feature dimension; both
  directions are gathers or stores to distinct rows (the slots of a token are distinct and
  every row is one slot's), so no atomics are needed and results do not depend on order.

Outputs are allocated filled with NaN where a kernel should write every element, so an
element it misses shows in the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _scores(logits, col_ok, SIGMOID: tl.constexpr):
    """Scores and balance-loss probabilities of a block of rows (masked columns: 0)."""
    if SIGMOID:
        s = tl.where(col_ok, tl.sigmoid(logits), 0.0)
        probs = s / tl.sum(s, axis=1)[:, None]
    else:
        z = tl.where(col_ok, logits, float("-inf"))
        e = tl.exp(z - tl.max(z, axis=1)[:, None])
        e = tl.where(col_ok, e, 0.0)
        s = e / tl.sum(e, axis=1)[:, None]
        probs = s
    return s, probs


@triton.jit
def _load_logits(logits_ptr, T, E, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    """This program's block of rows of the (T, E) logits, with its masks."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    row_ok = rows < T
    col_ok = cols[None, :] < E
    ok = row_ok[:, None] & col_ok
    logits = tl.load(logits_ptr + rows[:, None] * E + cols[None, :], mask=ok, other=0.0)
    return rows, cols, row_ok, col_ok, ok, logits


@triton.jit
def _gating_fwd(logits_ptr, bias_ptr, top_ptr, gates_ptr, probs_ptr, counts_ptr, T, E,
                K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
                BLOCK_E: tl.constexpr, SIGMOID: tl.constexpr, RENORM: tl.constexpr,
                HAS_BIAS: tl.constexpr):
    rows, cols, row_ok, col_ok, ok, logits = _load_logits(logits_ptr, T, E, BLOCK_T, BLOCK_E)
    s, probs = _scores(logits, col_ok, SIGMOID)
    tl.store(probs_ptr + rows[:, None] * E + cols[None, :], probs, mask=ok)
    choice = s
    if HAS_BIAS:
        choice = s + tl.load(bias_ptr + cols, mask=cols < E, other=0.0)[None, :]
    choice = tl.where(col_ok, choice, float("-inf"))
    # The k picks stay in registers until the one store at the end (a store and a reload
    # by the same program would need a barrier).
    ks = tl.arange(0, BLOCK_K)[None, :]
    top = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int64)
    gates = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    total = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for j in tl.static_range(K):
        idx = tl.argmax(choice, axis=1, tie_break_left=True)
        hit = cols[None, :] == idx[:, None]
        gate = tl.sum(tl.where(hit, s, 0.0), axis=1)
        top = tl.where(ks == j, idx.to(tl.int64)[:, None], top)
        gates = tl.where(ks == j, gate[:, None], gates)
        tl.atomic_add(counts_ptr + idx, 1, mask=row_ok)
        total += gate
        choice = tl.where(hit, float("-inf"), choice)
    if RENORM:
        gates = gates / total[:, None]
    out = rows[:, None] * K + ks
    keep = row_ok[:, None] & (ks < K)
    tl.store(top_ptr + out, top, mask=keep)
    tl.store(gates_ptr + out, gates, mask=keep)


@triton.jit
def _gating_bwd(logits_ptr, top_ptr, dgates_ptr, dprobs_ptr, dlogits_ptr, T, E,
                K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                SIGMOID: tl.constexpr, RENORM: tl.constexpr):
    rows, cols, row_ok, col_ok, ok, logits = _load_logits(logits_ptr, T, E, BLOCK_T, BLOCK_E)
    s, _ = _scores(logits, col_ok, SIGMOID)
    # Raw gates g_j = s[top_j]; with renormalization gates = g / sum(g), whose chain rule
    # is dg_j = (dgate_j - sum_m dgate_m * gate_m) / sum(g).
    total = tl.zeros((BLOCK_T,), dtype=tl.float32)
    weighted = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for j in tl.static_range(K):
        idx = tl.load(top_ptr + rows * K + j, mask=row_ok, other=0)
        g = tl.sum(tl.where(cols[None, :] == idx[:, None], s, 0.0), axis=1)
        dgate = tl.load(dgates_ptr + rows * K + j, mask=row_ok, other=0.0)
        total += g
        weighted += dgate * g
    ds = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    for j in tl.static_range(K):
        idx = tl.load(top_ptr + rows * K + j, mask=row_ok, other=0)
        dgate = tl.load(dgates_ptr + rows * K + j, mask=row_ok, other=0.0)
        if RENORM:
            dg = (dgate - weighted / total) / total
        else:
            dg = dgate
        ds += tl.where(cols[None, :] == idx[:, None], dg[:, None], 0.0)
    dprobs = tl.load(dprobs_ptr + rows[:, None] * E + cols[None, :], mask=ok, other=0.0)
    if SIGMOID:  # probs = s / sum(s)
        ssum = tl.sum(s, axis=1)[:, None]
        ds += dprobs / ssum - tl.sum(dprobs * s, axis=1)[:, None] / (ssum * ssum)
        dl = ds * s * (1.0 - s)
    else:  # probs = s = softmax(logits)
        ds += dprobs
        dl = s * (ds - tl.sum(s * ds, axis=1)[:, None])
    tl.store(dlogits_ptr + rows[:, None] * E + cols[None, :], dl, mask=ok)


def _gating_blocks(n_experts: int) -> tuple[int, int]:
    block_e = triton.next_power_of_2(n_experts)
    return max(1, min(64, 4096 // block_e)), block_e


def gating_forward(logits: torch.Tensor, bias: torch.Tensor | None, *, top_k: int,
                   sigmoid: bool, renormalize: bool):
    """(top, gates, probs, counts) of fp32 logits (T, E)."""
    assert logits.dtype == torch.float32 and logits.is_contiguous() and logits.dim() == 2
    n_tokens, n_experts = logits.shape
    assert 1 <= top_k <= n_experts
    top = torch.full((n_tokens, top_k), -1, dtype=torch.int64, device=logits.device)
    gates = torch.full((n_tokens, top_k), float("nan"), device=logits.device)
    probs = torch.full_like(logits, float("nan"))
    counts = torch.zeros(n_experts, dtype=torch.int32, device=logits.device)
    block_t, block_e = _gating_blocks(n_experts)
    has_bias = bias is not None
    bias_arg = bias.float().contiguous() if has_bias else logits
    _gating_fwd[(triton.cdiv(n_tokens, block_t),)](
        logits, bias_arg, top, gates, probs, counts, n_tokens, n_experts, K=top_k,
        BLOCK_K=triton.next_power_of_2(top_k), BLOCK_T=block_t, BLOCK_E=block_e, SIGMOID=sigmoid, RENORM=renormalize,
        HAS_BIAS=has_bias)
    return top, gates, probs, counts


def gating_backward(logits, top, dgates, dprobs, *, sigmoid: bool, renormalize: bool):
    n_tokens, n_experts = logits.shape
    dlogits = torch.full_like(logits, float("nan"))
    block_t, block_e = _gating_blocks(n_experts)
    _gating_bwd[(triton.cdiv(n_tokens, block_t),)](
        logits, top, dgates.float().contiguous(), dprobs.float().contiguous(), dlogits,
        n_tokens, n_experts, K=top.shape[1], BLOCK_T=block_t, BLOCK_E=block_e,
        SIGMOID=sigmoid, RENORM=renormalize)
    return dlogits


@triton.jit
def _permute_fwd(x_ptr, slot_ptr, rows_ptr, D, K: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # t * D can pass 2**31
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        x = tl.load(x_ptr + t * D + cols, mask=cols < D)
        for j in tl.static_range(K):
            s = tl.load(slot_ptr + t * K + j)
            tl.store(rows_ptr + s * D + cols, x, mask=(cols < D) & (cols * 0 + s >= 0))


@triton.jit
def _permute_bwd(drows_ptr, slot_ptr, dx_ptr, D, K: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # t * D can pass 2**31
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for j in tl.static_range(K):
            s = tl.load(slot_ptr + t * K + j)
            acc += tl.load(drows_ptr + s * D + cols, mask=(cols < D) & (cols * 0 + s >= 0),
                           other=0.0).to(tl.float32)
        tl.store(dx_ptr + t * D + cols, acc.to(dx_ptr.dtype.element_ty), mask=cols < D)


@triton.jit
def _combine_fwd(rows_ptr, gates_ptr, slot_ptr, y_ptr, D, K: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # t * D can pass 2**31
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for j in tl.static_range(K):
            s = tl.load(slot_ptr + t * K + j)
            g = tl.load(gates_ptr + t * K + j)
            r = tl.load(rows_ptr + s * D + cols, mask=(cols < D) & (cols * 0 + s >= 0), other=0.0)
            acc += g * r.to(tl.float32)
        tl.store(y_ptr + t * D + cols, acc, mask=cols < D)


@triton.jit
def _combine_bwd(rows_ptr, gates_ptr, slot_ptr, dy_ptr, drows_ptr, dgates_ptr, D,
                 K: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # t * D can pass 2**31
    for j in tl.static_range(K):
        s = tl.load(slot_ptr + t * K + j)
        g = tl.load(gates_ptr + t * K + j)
        dot = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            keep = (cols < D) & (cols * 0 + s >= 0)  # a vector mask: the slot is a scalar
            dy = tl.load(dy_ptr + t * D + cols, mask=cols < D, other=0.0)
            r = tl.load(rows_ptr + s * D + cols, mask=keep, other=0.0).to(tl.float32)
            tl.store(drows_ptr + s * D + cols, (g * dy).to(drows_ptr.dtype.element_ty),
                     mask=keep)
            dot += r * dy
        tl.store(dgates_ptr + t * K + j, tl.sum(dot, axis=0))


def _block_d(d: int) -> int:
    return min(1024, triton.next_power_of_2(d))


def _check_slots(slot: torch.Tensor, n_tokens: int) -> None:
    assert slot.dtype == torch.int64 and slot.is_contiguous()
    assert slot.dim() == 2 and slot.shape[0] == n_tokens


def permute_forward(x: torch.Tensor, slot: torch.Tensor, n_rows: int) -> torch.Tensor:
    assert x.is_contiguous() and x.dim() == 2
    _check_slots(slot, x.shape[0])
    rows = torch.full((n_rows, x.shape[1]), float("nan"), dtype=x.dtype, device=x.device)
    _permute_fwd[(x.shape[0],)](x, slot, rows, x.shape[1], K=slot.shape[1],
                                BLOCK_D=_block_d(x.shape[1]))
    return rows


def permute_backward(drows: torch.Tensor, slot: torch.Tensor, x_dtype: torch.dtype
                     ) -> torch.Tensor:
    drows = drows.contiguous()
    dx = torch.full((slot.shape[0], drows.shape[1]), float("nan"), dtype=x_dtype,
                    device=drows.device)
    _permute_bwd[(slot.shape[0],)](drows, slot, dx, drows.shape[1], K=slot.shape[1],
                                   BLOCK_D=_block_d(drows.shape[1]))
    return dx


def combine_forward(rows: torch.Tensor, gates: torch.Tensor, slot: torch.Tensor
                    ) -> torch.Tensor:
    assert rows.is_contiguous() and gates.dtype == torch.float32 and gates.is_contiguous()
    _check_slots(slot, gates.shape[0])
    y = torch.full((slot.shape[0], rows.shape[1]), float("nan"), device=rows.device)
    _combine_fwd[(slot.shape[0],)](rows, gates, slot, y, rows.shape[1], K=slot.shape[1],
                                   BLOCK_D=_block_d(rows.shape[1]))
    return y


def combine_backward(rows, gates, slot, dy):
    dy = dy.float().contiguous()
    drows = torch.full_like(rows, float("nan"))
    dgates = torch.full_like(gates, float("nan"))
    _combine_bwd[(slot.shape[0],)](rows, gates, slot, dy, drows, dgates, rows.shape[1],
                                   K=slot.shape[1], BLOCK_D=_block_d(rows.shape[1]))
    return drows, dgates
