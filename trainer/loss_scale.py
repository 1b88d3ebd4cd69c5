"""Dynamic loss scaling for fp16, in the form Megatron-LM and DeepSpeed users know.

The scale multiplies the loss before backward so small gradients survive fp16; gradients are
divided by it again before clipping and the optimizer step. The overflow verdict that drives
``update`` must be the same on every rank (the trainer agrees on it over all ranks), so every
rank's scale stays identical without communicating the scale itself.
"""

from __future__ import annotations

import torch
from torch import nn

from .precision import PrecisionConfig


class LossScaler:
    """State: ``scale``, steps since the last overflow (``growth_tracker``) and overflows left
    before backing off (``hysteresis_left``). Disabled (scale 1, never changes) unless fp16."""

    def __init__(self, cfg: PrecisionConfig, *, enabled: bool):
        self.cfg = cfg
        self.enabled = enabled
        self.scale = cfg.initial_scale if enabled else 1.0
        self.growth_tracker = 0
        self.hysteresis_left = cfg.hysteresis

    @property
    def loss_factor(self) -> float:
        """What the runner multiplies the loss by before backward: the scale (an engine
        that scales in its own backward has a scaler whose factor is 1)."""
        return self.scale

    def unscale_(self, parts: list[nn.Module]) -> None:
        """Divide every local gradient by the scale (in place); non-finite values stay
        non-finite, so the overflow check after this still sees them."""
        if not self.enabled:
            return
        grads = [_local(p.grad) for part in parts for p in part.parameters() if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, overflow: bool) -> None:
        """After each step: back off after ``hysteresis`` overflows, grow after
        ``growth_interval`` clean steps in a row."""
        if not self.enabled:
            return
        cfg = self.cfg
        if overflow:
            self.growth_tracker = 0
            self.hysteresis_left -= 1
            if self.hysteresis_left <= 0:
                self.scale = max(self.scale * cfg.backoff_factor, cfg.min_scale)
            return
        self.growth_tracker += 1
        if self.growth_tracker == cfg.growth_interval:
            self.growth_tracker = 0
            self.hysteresis_left = cfg.hysteresis
            self.scale *= cfg.growth_factor

    def state_dict(self) -> dict:
        if not self.enabled:
            return {}
        return {"scale": self.scale, "growth_tracker": self.growth_tracker,
                "hysteresis_left": self.hysteresis_left}

    def load_state_dict(self, state: dict) -> None:
        if not self.enabled:
            return  # resuming an fp16 run in bf16/fp32: there is nothing to scale
        if "scale" not in state:  # saved by a run without fp16: start scaling afresh
            return
        self.scale = float(state["scale"])
        self.growth_tracker = int(state["growth_tracker"])
        self.hysteresis_left = int(state["hysteresis_left"])


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor gradient (scaling is elementwise, so shards suffice)."""
    return t.to_local() if hasattr(t, "to_local") else t
