"""Pure-PyTorch attention: the specification the fused kernels are tested against.

Materializes the (s_q, s_k) score matrix, so it is for tests and small shapes on CPU.
"""

from __future__ import annotations

import math

import torch

from .mask import AttentionMask, dense_mask


def attention_reference(
    q_bhsd: torch.Tensor,
    k_bhsd: torch.Tensor,
    v_bhsd: torch.Tensor,
    mask: AttentionMask,
    *,
    scale: float | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Softmax attention with grouped-query heads; returns (b, h_q, s_q, d) in q's dtype.

    With ``upcast`` (default) everything runs in fp32 or wider, as fused kernels accumulate in
    fp32; ``upcast=False`` computes in the input dtype, the baseline error that kernel tests
    allow a low-precision kernel to reach.
    A query with no allowed key (possible only with document masks on a cache) outputs zeros.
    """
    b, h_q, s_q, d = q_bhsd.shape
    h_kv, s_k = k_bhsd.shape[1], k_bhsd.shape[2]
    if h_q % h_kv:
        raise ValueError(f"kv heads({h_kv}) must divide query heads({h_q})")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    compute = torch.promote_types(q_bhsd.dtype, torch.float32) if upcast else q_bhsd.dtype
    q = q_bhsd.to(compute)
    k = k_bhsd.to(compute).repeat_interleave(h_q // h_kv, dim=1)
    v = v_bhsd.to(compute).repeat_interleave(h_q // h_kv, dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    allowed = dense_mask(mask, b, s_q, s_k, q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(compute, torch.float32)).nan_to_num(0.0).to(compute)
    return torch.matmul(probs, v).to(q_bhsd.dtype)
