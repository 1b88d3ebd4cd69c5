"""The one entry point model code uses for attention; picks a backend per call.

Backends share one signature: (q, k, v) in (batch, heads, seq, head_dim) layout, grouped-query
heads allowed (kv heads divide query heads), an ``AttentionMask`` spec and a softmax scale.
Under tensor parallelism q/k/v simply hold the local heads, so no backend needs to know.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .mask import AttentionMask, dense_mask
from .reference import attention_reference

BACKENDS = ("auto", "triton", "flash_attn", "sdpa", "reference")


def _sdpa(q, k, v, mask: AttentionMask, *, scale: float | None) -> torch.Tensor:
    gqa = q.shape[1] != k.shape[1]
    if mask.is_plain_causal and q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if mask.is_plain_full:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    allowed = dense_mask(mask, q.shape[0], q.shape[2], k.shape[2], q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=gqa)
    # A query with no allowed key gives NaN in SDPA; the spec (reference) defines it as zero.
    return out.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)


def _triton(q, k, v, mask: AttentionMask, *, scale: float | None) -> torch.Tensor:
    from .op import flash_attention  # imported lazily: triton is optional off Linux

    return flash_attention(q, k, v, mask, scale=scale)


def _flash_attn(q, k, v, mask: AttentionMask, *, scale: float | None) -> torch.Tensor:
    raise NotImplementedError("attention.backend=flash_attn is not available yet; use sdpa")


_IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": attention_reference,
    "sdpa": _sdpa,
    "triton": _triton,
    "flash_attn": _flash_attn,
}


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``auto`` into a concrete backend for ``device``; reject unknown names."""
    if backend not in BACKENDS:
        raise ValueError(f"attention.backend='{backend}' is not one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "sdpa"
    return backend


def attention(
    q_bhsd: torch.Tensor,
    k_bhsd: torch.Tensor,
    v_bhsd: torch.Tensor,
    mask: AttentionMask,
    *,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of q over (k, v) under ``mask``; returns (b, h_q, s_q, head_dim)."""
    impl = _IMPLS[resolve_backend(backend, q_bhsd.device)]
    return impl(q_bhsd, k_bhsd, v_bhsd, mask, scale=scale)
