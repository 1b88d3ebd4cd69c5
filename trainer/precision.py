"""The mixed-precision policy: one object decides every dtype of a run.

- ``fp32``: everything in fp32.
- ``bf16``: fp32 master weights and optimizer state, bf16 compute, fp32 gradient reductions.
- ``fp16``: as bf16 in fp16, plus dynamic loss scaling (``LossScaler``): fp16's 5-bit
  exponent underflows small gradients unless the loss is scaled up before backward.

With data parallelism the model is wrapped by FSDP2, whose ``MixedPrecisionPolicy`` casts the
parameters once per all-gather (half the gather bytes) and reduces gradients in fp32. Without
it (one process, or tensor/pipeline parallelism alone) autocast does the casting; parameters
stay fp32, so gradients and their reductions are fp32 too. The two are never combined: under
FSDP's cast, autocast would only add cast kernels. Under ``parallel.engine=deepspeed``, fp16
is DeepSpeed's own (fp16 weights, fp32 master copies, gradients reduced in fp32) and bf16 is
autocast over its fp32 weights (trainer/deepspeed_engine.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PrecisionConfig:
    """``dtype`` plus fp16's dynamic loss scaling (Megatron-LM / DeepSpeed defaults): the scale
    starts at ``initial_scale``, grows by ``growth_factor`` after ``growth_interval`` steps
    without overflow, and backs off by ``backoff_factor`` after ``hysteresis`` overflows,
    never below ``min_scale``."""

    dtype: str = "fp32"  # fp32 | bf16 | fp16
    initial_scale: float = 65536.0
    growth_factor: float = 2.0
    growth_interval: int = 1000
    backoff_factor: float = 0.5
    hysteresis: int = 2
    min_scale: float = 1.0

    def validate(self) -> None:
        if self.dtype not in PRECISIONS:
            raise ValueError(f"precision.dtype='{self.dtype}' is not one of {list(PRECISIONS)}")
        if not self.min_scale > 0 or self.initial_scale < self.min_scale:
            raise ValueError(f"precision.initial_scale({self.initial_scale}) must be >= "
                             f"min_scale({self.min_scale}) > 0")
        if self.growth_factor <= 1 or not 0 < self.backoff_factor < 1:
            raise ValueError(f"precision.growth_factor({self.growth_factor}) must be > 1 and "
                             f"backoff_factor({self.backoff_factor}) in (0, 1)")
        if self.growth_interval <= 0 or self.hysteresis <= 0:
            raise ValueError(f"precision.growth_interval({self.growth_interval}) and "
                             f"hysteresis({self.hysteresis}) must be > 0")


class PrecisionPolicy:
    """Built once from ``PrecisionConfig``; tells FSDP, the forward pass and the step what
    to do. ``engine_casts``: whether the data-parallel engine casts the weights in this
    layout (FSDP2 when it wraps the model; DeepSpeed under fp16), so autocast stays off."""

    def __init__(self, cfg: PrecisionConfig, *, engine_casts: bool):
        self.cfg = cfg
        self.compute_dtype = PRECISIONS[cfg.dtype]
        self.engine_casts = engine_casts

    @property
    def mixed(self) -> bool:
        return self.compute_dtype != torch.float32

    @property
    def loss_scaling(self) -> bool:
        return self.compute_dtype == torch.float16

    def fsdp_policy(self):
        """FSDP2's policy: parameters gathered in the compute dtype, gradients reduced in fp32
        (summing many ranks' low-precision gradients would lose their small parts)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if not self.mixed:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)

    def autocast(self, device: torch.device):
        """The context for forward passes: autocast when the engine does not cast."""
        if not self.mixed or self.engine_casts:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.compute_dtype)
