"""Autograd wrapper around the Triton FlashAttention kernels (see triton.py)."""

from __future__ import annotations

import math

import torch

from .mask import AttentionMask
from .triton import attention_backward, attention_forward


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask: AttentionMask, scale: float):
        out, lse = attention_forward(q, k, v, mask, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.scale = mask, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(dout, q, k, v, out, lse, ctx.mask, scale=ctx.scale)
        return dq, dk, dv, None, None


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    # The kernels take any batch/head/seq strides (e.g. a transposed (b, s, h, d) view, no copy)
    # but need head_dim contiguous; only such rare layouts pay for a copy.
    return t if t.stride(-1) == 1 else t.contiguous()


def flash_attention(
    q_bhsd: torch.Tensor,
    k_bhsd: torch.Tensor,
    v_bhsd: torch.Tensor,
    mask: AttentionMask,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused attention of q over (k, v) under ``mask``; same contract as attention_reference.

    q (b, h_q, s_q, d), k/v (b, h_kv, s_k, d) with h_kv dividing h_q; fp32/bf16/fp16.
    Returns (b, h_q, s_q, d) in q's dtype; gradients come back in the input dtypes.
    ``scale`` defaults to 1/sqrt(d).
    """
    scale = 1.0 / math.sqrt(q_bhsd.shape[-1]) if scale is None else float(scale)
    q, k, v = (_unit_last_stride(t) for t in (q_bhsd, k_bhsd, v_bhsd))
    return _FlashAttention.apply(q, k, v, mask, scale)
