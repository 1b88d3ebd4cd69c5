"""DeepSpeed ZeRO as the data-parallel engine (``parallel.engine=deepspeed``).

The trainer's step is unchanged: the runner's backward goes through ``backward`` (DeepSpeed
reduces gradients in its own hooks and buckets), ``set_gradient_sync`` marks the last
micro-batch as DeepSpeed's accumulation boundary, ``grad_norm`` reads the reduced
gradients through DeepSpeed's public ``safe_get_*_grad`` API (so the verdict on a
non-finite step comes before any update, as with FSDP2), and ``step`` lets DeepSpeed clip
to the same norm and update. The model, our AdamW (its param groups keep the learning rate
the trainer sets) and a config generated from ours go to ``deepspeed.initialize``.

Our loss is already divided by the global target count (times the data-parallel size,
since reductions average over ranks, as DeepSpeed's do too), so DeepSpeed must not divide
it by the accumulation steps again (``scale_wrt_gas=False``).

Precision: fp32; bf16 as autocast over DeepSpeed's fp32 weights (launcher/build.py's
``build_precision``); fp16 as DeepSpeed's own (fp16 weights, fp32 master copies in its
ZeRO partitions, its dynamic loss scaler set from ``precision.*``, seen by the trainer
through ``DeepSpeedLossScaler``). A skipped step goes through DeepSpeed's overflow path
(``skip``). tp = pp = cp = 1 (see ``check_deepspeed``). Checkpoints are
triforge's own (trainer/deepspeed_state.py), so they resume under either engine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from triforge.errors import TriforgeError
from triforge.parallel.context import ParallelContext

from .deepspeed_scaler import DeepSpeedLossScaler
from .deepspeed_state import DeepSpeedState
from .loss_scale import LossScaler
from .optim import Optimizers
from .precision import PrecisionConfig

# Keys of a user's DeepSpeed JSON that our config decides; another value there is an error.
OURS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
        "gradient_clipping", "fp16.enabled", "bf16.enabled", "zero_optimization.stage",
        "fp16.loss_scale", "fp16.initial_scale_power", "fp16.loss_scale_window",
        "fp16.hysteresis", "fp16.min_loss_scale")


def deepspeed_config(*, batch_size: int, micro_batch_size: int, dp: int, grad_clip: float,
                     stage: int, offload_optimizer: bool, offload_params: bool,
                     fp16: PrecisionConfig | None = None, user_file: str = "") -> dict:
    """DeepSpeed's config for our job, with ``user_file``'s JSON merged on top. ``fp16``:
    the job's loss-scaling settings, for DeepSpeed's own dynamic scaler (None: no fp16).
    ``micro_batch_size`` 0 means no accumulation: one micro-batch of the rank's whole share."""
    micro_batch_size = micro_batch_size or batch_size // dp
    zero: dict = {"stage": stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if offload_params:
        zero["offload_param"] = {"device": "cpu"}
    ours = {
        "train_batch_size": batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": batch_size // (micro_batch_size * dp),
        "gradient_clipping": grad_clip,
        "fp16": fp16_section(fp16), "bf16": {"enabled": False},
        # fp16 gradients are reduced in fp32, as FSDP2's are (precision.py); a user's JSON
        # may choose fp16 reductions (half the bytes, coarser sums).
        **({"communication_data_type": "fp32"} if fp16 is not None else {}),
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False,
        # Offloaded or not, the optimizer is our AdamW (optim.impl), not DeepSpeedCPUAdam
        # (a compiled extension); DeepSpeed refuses a client optimizer with offload
        # unless told.
        "zero_force_ds_cpu_optimizer": False,
    }
    if not user_file:
        return ours
    try:
        user = json.loads(Path(user_file).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"parallel.deepspeed_config={user_file}: cannot read it as JSON "
                         f"({exc}); fix the file or leave the option empty") from None
    for key in OURS:
        mine, theirs = _lookup(ours, key), _lookup(user, key)
        if theirs is not None and theirs != mine:
            raise ValueError(f"parallel.deepspeed_config={user_file}: '{key}' is {theirs} "
                             f"there but {mine} from triforge's config; remove it from the "
                             "file (triforge sets it from trainer/precision/parallel)")
    return _merge(ours, user)


def fp16_section(cfg: PrecisionConfig | None) -> dict:
    """DeepSpeed's dynamic loss scaler set as ours is (precision.*): the same start, window,
    hysteresis and floor. DeepSpeed's factors are fixed at 2 and 1/2 and its scales are
    powers of two (``check_deepspeed`` refuses other settings)."""
    if cfg is None:
        return {"enabled": False}
    return {"enabled": True, "loss_scale": 0,  # 0: dynamic
            "initial_scale_power": round(math.log2(cfg.initial_scale)),
            "loss_scale_window": cfg.growth_interval, "hysteresis": cfg.hysteresis,
            "min_loss_scale": cfg.min_scale}


def _lookup(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (_merge(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


class DeepSpeedEngine:
    """ZeRO stage 1, 2 or 3 over every rank (data parallelism only)."""

    def __init__(self, ctx: ParallelContext, config: dict, *, cpu_fp16: bool = False):
        self.ctx, self.config = ctx, config
        self.cpu_fp16 = cpu_fp16  # debug.deepspeed_cpu_fp16 (trainer/numerics.py)
        self.parts: list[nn.Module] = []
        self.optimizer: Optimizers | None = None
        self.ds = None

    def wrap(self, part: nn.Module) -> None:
        """Nothing yet: DeepSpeed wraps the model in ``attach``, with its optimizer."""

    def attach(self, parts: list[nn.Module], optimizer: Optimizers) -> None:
        import deepspeed  # optional (triforge[deepspeed]), checked at start-up

        (part,) = parts
        self.parts, self.optimizer = parts, optimizer
        if self.cpu_fp16:
            from deepspeed.accelerator import get_accelerator

            get_accelerator().is_fp16_supported = lambda: True
        self.ds, *_ = deepspeed.initialize(model=part, optimizer=optimizer.optimizers[0],
                                           config=self.config, dist_init_required=False)

    def forward_module(self, part: nn.Module) -> nn.Module:
        """What the runner calls for the forward: DeepSpeed's engine, whose forward also
        moves ZeRO-3's micro-step count (called around it, ZeRO-3 overwrote the first
        micro-batch's gradients with the second's instead of adding them)."""
        return self.ds

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss, scale_wrt_gas=False)

    def set_gradient_sync(self, enabled: bool) -> None:
        self.ds.set_gradient_accumulation_boundary(enabled)

    def unscale_(self, scaler: LossScaler) -> None:
        """Nothing: DeepSpeed unscales fp16 gradients in its step (``grad_norm`` divides
        the norm by its scale)."""

    def loss_scaler(self, cfg: PrecisionConfig, *, enabled: bool) -> LossScaler:
        """fp16: DeepSpeed's own dynamic scaler, seen through ``DeepSpeedLossScaler``."""
        if not enabled:
            return LossScaler(cfg, enabled=False)
        return DeepSpeedLossScaler(cfg, self.ds.optimizer.loss_scaler)

    def grad_norm(self) -> torch.Tensor:
        """The global norm of the reduced gradients, before the step. ZeRO-3: each rank's
        own partitions (DeepSpeed's ``safe_get_local_grad``), squared sums added over the
        ranks. ZeRO-1/2: DeepSpeed's public API only assembles whole gradients
        (``safe_get_full_grad``, an all-reduce per parameter, so about one more gradient
        all-reduce per step); a partition-local norm for them is still to do."""
        from deepspeed.utils import safe_get_full_grad, safe_get_local_grad

        params = [p for p in self.parts[0].parameters() if p.requires_grad]
        scale = self.ds.optimizer.loss_scale  # fp16 gradients are still scaled; else 1
        if self.config["zero_optimization"]["stage"] == 3:
            local = torch.stack([safe_get_local_grad(p).float().pow(2).sum() for p in params])
            return self.ctx.all_reduce_loss(local.sum()).sqrt() / scale
        return torch.stack([safe_get_full_grad(p).float().pow(2).sum() for p in params]
                           ).sum().sqrt() / scale

    def step(self, *, max_norm: float, grad_norm: torch.Tensor) -> None:
        """DeepSpeed clips to ``gradient_clipping`` (= trainer.grad_clip) and updates."""
        self.ds.step()

    def skip(self, grad_norm: torch.Tensor) -> None:
        """DeepSpeed has no call that drops a step's gradients except its own overflow path:
        its step finds the non-finite gradients, clears them without updating, and (fp16)
        backs its loss scale off, as ``LossScaler.update`` would. A step skipped with
        finite gradients (a non-finite loss whose gradients stayed finite) cannot be
        dropped that way, so it stops the run rather than being applied."""
        if torch.isfinite(grad_norm):
            raise TriforgeError("a step with a non-finite loss but finite gradients cannot "
                                "be skipped under parallel.engine=deepspeed (DeepSpeed drops "
                                "only non-finite gradients); use parallel.engine=fsdp2")
        self.ds.step()

    def zero_grad(self) -> None:
        """DeepSpeed clears its gradients in ``step``."""

    def tensor_state(self) -> DeepSpeedState:
        """Checkpoints in triforge's own format (trainer/deepspeed_state.py)."""
        return self._state(weights_only=False)

    def model_state(self) -> DeepSpeedState:
        """The weights alone, written into DeepSpeed's master copies as well."""
        return self._state(weights_only=True)

    def _state(self, *, weights_only: bool) -> DeepSpeedState:
        return DeepSpeedState(self.ds, self.parts[0], self.optimizer.optimizers[0],
                              self.config["zero_optimization"]["stage"],
                              weights_only=weights_only)
