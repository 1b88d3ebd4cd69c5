"""RMSNorm implementations and their dispatcher (``model.norm_impl``).

- ``torch``: reference.py, plain PyTorch ops (the spec; DTensor-aware through its ops).
- ``triton``: our fused forward and backward (triton.py, op.py): one read of the input per
  direction, and the backward keeps the input in its own dtype plus one fp32 per row.
- ``apex``: NVIDIA apex's ``fused_rms_norm_affine`` (CUDA only), for clusters that have it.

Under tensor parallelism a norm's input and weight are DTensors; the fused implementations
run on each rank's local rows (see ``_on_local_rows``).
"""

from __future__ import annotations

import importlib.util

import torch
from torch.distributed.tensor import DTensor, Partial, Replicate

from .reference import rms_norm_reference

IMPLS = ("torch", "triton", "apex")


def _triton(x, weight, eps):
    from .op import rms_norm_triton  # imported lazily: triton is optional off Linux

    return rms_norm_triton(x, weight, eps)


def _apex(x, weight, eps):
    from apex.normalization.fused_layer_norm import fused_rms_norm_affine  # checked at start

    return fused_rms_norm_affine(x, weight, weight.shape, eps)


_FUSED = {"triton": _triton, "apex": _apex}


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *,
             impl: str = "torch") -> torch.Tensor:
    """RMSNorm of ``x`` over its last dimension with ``weight``; the contract of reference.py."""
    if impl == "torch":
        return rms_norm_reference(x, weight, eps)
    if isinstance(x, DTensor):
        return _on_local_rows(x, weight, eps, _FUSED[impl])
    return _FUSED[impl](x, weight, eps)


def _on_local_rows(x: DTensor, weight, eps: float, fused) -> DTensor:
    """A tensor-parallel norm: the input replicated or sharded along the sequence (sequence
    parallelism), the weight a replicated DTensor. RMSNorm is per token, so each rank runs
    the kernel on its own rows with the whole weight. The weight's gradient is then each
    rank's sum over its own rows: complete when the rows are replicated, a partial sum
    (reduced by DTensor where it is needed) when they are sharded."""
    last = x.ndim - 1
    for p in x.placements:
        if p.is_partial() or (p.is_shard() and p.dim % x.ndim == last):
            raise ValueError(f"RMSNorm needs whole rows on each rank, not placement {p}")
    sharded = any(p.is_shard() for p in x.placements)
    grads = [Partial() if sharded else Replicate()] * x.device_mesh.ndim
    local_w = weight.to_local(grad_placements=grads) if isinstance(weight, DTensor) else weight
    out = fused(x.to_local(), local_w, eps)
    return DTensor.from_local(out, x.device_mesh, x.placements, run_check=False)


def check_norm_impl(impl: str, *, interpreter: bool = False) -> None:
    """Fail at start-up, with the fix, when ``model.norm_impl`` cannot run here;
    ``interpreter``: Triton's CPU interpreter is on (``TRITON_INTERPRET=1``)."""
    if impl not in IMPLS:
        raise ValueError(f"model.norm_impl='{impl}' is not one of {IMPLS}")
    cuda = torch.cuda.is_available()
    if impl == "triton":
        if importlib.util.find_spec("triton") is None:
            raise ValueError("model.norm_impl=triton needs the 'triton' package, which is not "
                             "installed; install it or use model.norm_impl=torch")
        if not (cuda or interpreter):
            raise ValueError("model.norm_impl=triton runs Triton kernels, which need a CUDA "
                             "GPU (or TRITON_INTERPRET=1, slow, to run them on the CPU); "
                             "use model.norm_impl=torch")
    if impl == "apex" and not (cuda and importlib.util.find_spec("fused_layer_norm_cuda")):
        raise ValueError("model.norm_impl=apex needs a CUDA GPU and NVIDIA apex built with its "
                         "CUDA extensions (built from github.com/NVIDIA/apex, see the README); "
                         "use model.norm_impl=triton for a fused norm without apex")


__all__ = ["IMPLS", "check_norm_impl", "rms_norm", "rms_norm_reference"]
