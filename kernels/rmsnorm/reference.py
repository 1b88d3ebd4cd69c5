"""RMSNorm (Zhang & Sennrich 2019), as in Llama: the spec the fused kernels are held to.

y = round(x * rsqrt(mean(x^2) + eps)) * w, with the mean square and the normalization in
fp32 (low-precision activations would lose the mean square; fp64 stays fp64, so a
float64 run is an exact yardstick), ``round`` the cast back to
x's dtype, and the product with the weight in the dtype the two promote to.
"""

from __future__ import annotations

import torch


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    wide = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32, or fp64 for fp64
    normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight
