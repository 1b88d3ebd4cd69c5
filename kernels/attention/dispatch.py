"""The one entry point model code uses for attention; picks a backend per call.

Backends share one signature: (q, k, v) in (batch, heads, seq, head_dim) layout, grouped-query
heads allowed (kv heads divide query heads), an ``AttentionMask`` spec and a softmax scale.
Under tensor parallelism q/k/v simply hold the local heads, so no backend needs to know.
"""

from __future__ import annotations

import importlib.util
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
    if mask.is_offset:
        raise ValueError("attention.backend=flash_attn cannot place queries and keys at given "
                         "positions (a block of a longer sequence); use triton or sdpa")
    if mask.kind == "prefix":
        raise ValueError(
            f"attention.backend=flash_attn cannot express a 'prefix' mask"
            f"{' with document ids' if mask.doc_ids is not None else ''}; use triton or sdpa"
        )
    if mask.doc_ids is not None:
        return _flash_attn_varlen(q, k, v, mask, scale=scale)
    from flash_attn import flash_attn_func  # optional dependency, checked at start-up

    # flash-attn takes (b, s, h, d) and handles grouped-query heads itself.
    out_bshd = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        softmax_scale=scale, causal=mask.kind == "causal",
    )
    return out_bshd.transpose(1, 2)


def document_segments(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``cu_seqlens`` (int32, segments + 1) and the longest segment of a packed batch, for
    flash-attn's variable-length kernels: the (b, s) tokens flattened row by row, a segment
    being each run of equal document ids within a row. Packing writes each document as one
    run, so a segment is a document (or the part of one that a row holds)."""
    b, s = doc_ids.shape
    starts = torch.ones(b, s, dtype=torch.bool, device=doc_ids.device)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = starts.flatten().nonzero().flatten()
    end = torch.tensor([b * s], device=doc_ids.device)
    cu_seqlens = torch.cat([first, end]).to(torch.int32)
    return cu_seqlens, int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def _flash_attn_varlen(q, k, v, mask: AttentionMask, *, scale: float | None) -> torch.Tensor:
    """Document masking through ``flash_attn_varlen_func``: each document a sequence of its
    own, so no tile of another document is computed."""
    from flash_attn import flash_attn_varlen_func  # optional dependency, checked at start-up

    if q.shape[2] != k.shape[2]:
        raise ValueError("attention.backend=flash_attn with document ids needs queries and "
                         "keys of one length; use triton or sdpa")
    b, _, s, _ = q.shape
    cu_seqlens, longest = document_segments(mask.doc_ids.to(q.device))
    tokens = [t.transpose(1, 2).reshape(b * s, t.shape[1], t.shape[3]) for t in (q, k, v)]
    out = flash_attn_varlen_func(*tokens, cu_seqlens, cu_seqlens, longest, longest,
                                 softmax_scale=scale, causal=mask.kind == "causal")
    return out.view(b, s, q.shape[1], q.shape[3]).transpose(1, 2)


_IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": attention_reference,
    "sdpa": _sdpa,
    "triton": _triton,
    "flash_attn": _flash_attn,
}


def check_backend_available(backend: str) -> None:
    """Fail at start-up, not at the first forward, when a backend's package is missing."""
    package = {"triton": "triton", "flash_attn": "flash_attn"}.get(backend)
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(
            f"attention.backend={backend} needs the '{package}' package, which is not "
            "installed; install it or use attention.backend=sdpa"
        )


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
