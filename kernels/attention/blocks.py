"""Attention of one block of a longer sequence, the piece context parallelism's ring is made of.

A block is a run of queries against a run of keys, both placed at their positions in the whole
sequence (``AttentionMask.q_start``/``k_start``), so causal, prefix and document masks are
judged as in the unsplit attention. ``block_forward`` returns the block's output and its
log-sum-exp; outputs of the blocks of one query run merge exactly with ``merge_blocks``.
``block_backward`` takes the *merged* output and log-sum-exp: with them the block's
probabilities and ``delta = rowsum(dout * out)`` are the global ones, so the gradients of the
blocks add up to the gradient of the whole attention.

Two implementations share that contract: ``triton`` (the fused kernels, kernels/attention/
triton.py, on CUDA or under ``TRITON_INTERPRET=1``) and ``torch`` (the same math on the dense
(s_q, s_k) scores, for CPU runs and as the specification). Conventions: fp32 results;
log-sum-exp in base 2; a query with no allowed key in a block has log-sum-exp ``-inf`` and
output 0 (the kernel's +inf is turned into -inf here, so that merging is a plain
``logaddexp2``); ``block_backward`` takes -inf there as well.
"""

from __future__ import annotations

import math

import torch

from .mask import AttentionMask, dense_mask

LOG2E = 1.4426950408889634
BLOCK_IMPLS = ("triton", "torch")


def merge_blocks(out: torch.Tensor | None, lse: torch.Tensor | None, o: torch.Tensor,
                 lse_o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax-merge two partial results over disjoint keys (``out`` None: the first one):
    ``l = logaddexp2(l1, l2); o = o1 * 2^(l1 - l) + o2 * 2^(l2 - l)``, rows with no key in
    either (-inf both) staying 0."""
    if out is None:
        return o, lse_o
    new = torch.logaddexp2(lse, lse_o)
    ref = torch.where(new == -math.inf, 0.0, new)
    merged = out * torch.exp2(lse - ref)[..., None] + o * torch.exp2(lse_o - ref)[..., None]
    return merged, new


def block_forward(q, k, v, mask: AttentionMask, *, scale: float,
                  impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(out fp32 (b, h_q, s_q, d), lse2 fp32 (b, h_q, s_q), -inf where no key is allowed)."""
    if impl == "triton":
        from .op import _unit_last_stride
        from .triton import attention_forward

        q, k, v = (_unit_last_stride(t) for t in (q, k, v))
        out, lse = attention_forward(q, k, v, mask, scale=scale, out_dtype=torch.float32)
        return out, lse.masked_fill(lse == math.inf, -math.inf)
    scores = _scores2(q, k, mask, scale)
    lse = torch.logsumexp(scores * math.log(2.0), dim=-1) * LOG2E
    probs = torch.exp2(scores - _finite(lse)[..., None])
    return probs @ _repeat_kv(v, q.shape[1], scores.dtype), lse


def block_backward(dout, q, k, v, out, lse, mask: AttentionMask, *, scale: float,
                   impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) fp32 of one block, from the merged ``out`` (contiguous) and ``lse``."""
    if impl == "triton":
        from .op import _unit_last_stride
        from .triton import attention_backward

        q, k, v = (_unit_last_stride(t) for t in (q, k, v))
        lse = lse.masked_fill(lse == -math.inf, math.inf).contiguous()
        return attention_backward(dout, q, k, v, out.contiguous(), lse, mask, scale=scale,
                                  grad_dtype=torch.float32)
    scores = _scores2(q, k, mask, scale)
    probs = torch.exp2(scores - lse.masked_fill(lse == -math.inf, math.inf)[..., None])
    dout, out = dout.to(scores.dtype), out.to(scores.dtype)
    vf = _repeat_kv(v, q.shape[1], scores.dtype)
    delta = (dout * out).sum(-1, keepdim=True)
    ds = probs * (dout @ vf.transpose(-2, -1) - delta)
    dq = ds @ _repeat_kv(k, q.shape[1], scores.dtype) * scale
    dk = _sum_groups(ds.transpose(-2, -1) @ q.to(scores.dtype) * scale, k.shape[1])
    dv = _sum_groups(probs.transpose(-2, -1) @ dout, k.shape[1])
    return dq, dk, dv


def _scores2(q, k, mask: AttentionMask, scale: float) -> torch.Tensor:
    """Base-2 scores (s * scale * log2 e), -inf where the mask forbids."""
    compute = torch.promote_types(q.dtype, torch.float32)
    kf = _repeat_kv(k, q.shape[1], compute)
    scores = (q.to(compute) @ kf.transpose(-2, -1)) * (scale * LOG2E)
    allowed = dense_mask(mask, q.shape[0], q.shape[2], k.shape[2], q.device)
    return scores.masked_fill(~allowed, -math.inf)


def _finite(lse: torch.Tensor) -> torch.Tensor:
    return lse.masked_fill(lse == -math.inf, 0.0)


def _repeat_kv(t: torch.Tensor, h_q: int, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).repeat_interleave(h_q // t.shape[1], dim=1)


def _sum_groups(t: torch.Tensor, h_kv: int) -> torch.Tensor:
    """(b, h_q, s, d) per query head -> (b, h_kv, s, d): each kv head sums its group."""
    b, h_q, s, d = t.shape
    return t.view(b, h_kv, h_q // h_kv, s, d).sum(2)

