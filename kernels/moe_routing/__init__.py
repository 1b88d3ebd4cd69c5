"""MoE routing kernels and their dispatcher: fused gating (scores, top k, gates, counts),
the permutation of token rows into expert-contiguous order and the weighted combine back.

Model code calls ``gating``, ``permute`` and ``combine``; each picks the Triton kernel on
CUDA (``op.py``) and the PyTorch reference (``reference.py``, the spec) elsewhere, as the
attention dispatcher does. ``backend`` forces one (the tests run the kernels on the CPU
under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch

from .reference import combine_reference, gating_reference, permute_reference

BACKENDS = ("auto", "triton", "reference")


def _use_triton(device: torch.device, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"moe routing backend '{backend}' is not one of {BACKENDS}")
    return backend == "triton" or (backend == "auto" and device.type == "cuda")


def gating(logits: torch.Tensor, bias: torch.Tensor | None, *, top_k: int, score: str,
           renormalize: bool, backend: str = "auto"):
    """(top (T, k) int64, gates (T, k) fp32, probs (T, E) fp32): see reference.py."""
    if _use_triton(logits.device, backend):
        from .op import gating_triton

        top, gates, probs, _ = gating_triton(logits, bias, top_k=top_k, score=score,
                                             renormalize=renormalize)
        return top, gates, probs
    return gating_reference(logits, bias, top_k=top_k, score=score, renormalize=renormalize)


def permute(x: torch.Tensor, slot: torch.Tensor, n_rows: int, *, backend: str = "auto"
            ) -> torch.Tensor:
    if _use_triton(x.device, backend):
        from .op import permute_triton

        return permute_triton(x, slot, n_rows)
    return permute_reference(x, slot, n_rows)


def combine(rows: torch.Tensor, gates: torch.Tensor, slot: torch.Tensor, *,
            backend: str = "auto") -> torch.Tensor:
    if _use_triton(rows.device, backend):
        from .op import combine_triton

        return combine_triton(rows, gates, slot)
    return combine_reference(rows, gates, slot)


__all__ = ["BACKENDS", "combine", "gating", "permute"]
