"""Autograd wrappers of the Triton routing kernels (triton.py); the same contracts as
reference.py."""

from __future__ import annotations

import torch

from . import triton as kernels


class _Gating(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, bias, top_k: int, sigmoid: bool, renormalize: bool):
        logits = logits.float().contiguous()
        top, gates, probs, counts = kernels.gating_forward(
            logits, bias, top_k=top_k, sigmoid=sigmoid, renormalize=renormalize)
        ctx.save_for_backward(logits, top)
        ctx.flags = (sigmoid, renormalize)
        ctx.mark_non_differentiable(top, counts)
        return top, gates, probs, counts

    @staticmethod
    def backward(ctx, _dtop, dgates, dprobs, _dcounts):
        logits, top = ctx.saved_tensors
        sigmoid, renormalize = ctx.flags
        dgates = torch.zeros_like(logits[:, : top.shape[1]]) if dgates is None else dgates
        dprobs = torch.zeros_like(logits) if dprobs is None else dprobs
        dlogits = kernels.gating_backward(logits, top, dgates, dprobs, sigmoid=sigmoid,
                                          renormalize=renormalize)
        return dlogits, None, None, None, None


def gating_triton(logits: torch.Tensor, bias: torch.Tensor | None, *, top_k: int, score: str,
                  renormalize: bool):
    """(top, gates, probs) as ``gating_reference``, and the per-expert counts (int32)."""
    return _Gating.apply(logits, bias, top_k, score == "sigmoid", renormalize)


class _Permute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slot, n_rows: int):
        ctx.save_for_backward(slot)
        ctx.x_dtype = x.dtype
        return kernels.permute_forward(x.contiguous(), slot, n_rows)

    @staticmethod
    def backward(ctx, drows):
        (slot,) = ctx.saved_tensors
        return kernels.permute_backward(drows, slot, ctx.x_dtype), None, None


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, gates, slot):
        rows, gates = rows.contiguous(), gates.float().contiguous()
        ctx.save_for_backward(rows, gates, slot)
        return kernels.combine_forward(rows, gates, slot)

    @staticmethod
    def backward(ctx, dy):
        rows, gates, slot = ctx.saved_tensors
        drows, dgates = kernels.combine_backward(rows, gates, slot, dy)
        return drows, dgates, None


def permute_triton(x: torch.Tensor, slot: torch.Tensor, n_rows: int) -> torch.Tensor:
    return _Permute.apply(x, slot, n_rows)


def combine_triton(rows: torch.Tensor, gates: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    return _Combine.apply(rows, gates, slot)
