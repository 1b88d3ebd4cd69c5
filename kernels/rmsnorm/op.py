"""Autograd wrapper of the Triton RMSNorm kernels (triton.py); the contract of reference.py."""

from __future__ import annotations

import torch
from torch.distributed._functional_collectives import AsyncCollectiveTensor

from . import triton as kernels


def _plain(t: torch.Tensor) -> torch.Tensor:
    """The tensor itself: under tensor parallelism a DTensor's local rows (and their
    gradients) can arrive as an ``AsyncCollectiveTensor``, a wrapper around the result of a
    collective still in flight, whose storage a kernel launch cannot read."""
    return t.wait() if isinstance(t, AsyncCollectiveTensor) else t


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        rows = _plain(x).reshape(-1, x.shape[-1]).contiguous()
        y, rstd = kernels.rms_norm_forward(rows, _plain(weight).contiguous(), eps)
        ctx.save_for_backward(rows, weight, rstd)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        rows, weight, rstd = ctx.saved_tensors
        dx, dw = kernels.rms_norm_backward(_plain(dy).reshape(rows.shape).contiguous(), rows,
                                           weight.contiguous(), rstd)
        return dx.view(ctx.shape), dw, None


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _RMSNorm.apply(x, weight, eps)
