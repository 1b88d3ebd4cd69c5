"""RMSNorm (Zhang & Sennrich 2019), as in Llama; the math is kernels/rmsnorm/reference.py."""

import torch
from torch import nn

from triforge.kernels.rmsnorm import rms_norm


class RMSNorm(nn.Module):
    """``impl`` (``model.norm_impl``): torch (reference ops), triton (our fused kernels) or
    apex; all compute the same function, so checkpoints do not depend on it."""

    def __init__(self, dim: int, eps: float = 1e-5, impl: str = "torch"):
        super().__init__()
        self.eps, self.impl = eps, impl
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, impl=self.impl)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
