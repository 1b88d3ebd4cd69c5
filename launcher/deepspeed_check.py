"""Start-up checks for ``parallel.engine=deepspeed``: what trainer/deepspeed_engine.py covers,
each gap a one-line config error before any process group or model exists."""

from __future__ import annotations

import importlib.util
import math

from triforge.errors import ConfigError

from .build import pick_device
from .config import JobConfig
from .env import ProcessEnv

ENGINES = ("fsdp2", "deepspeed")


def check_deepspeed(job: JobConfig) -> None:
    """ZeRO 1-3 over data parallelism; fp32, bf16 (autocast over fp32 weights) or fp16
    (DeepSpeed's own, with its loss scaler)."""
    p = job.parallel
    if p.engine not in ENGINES:
        raise ConfigError(f"config: parallel.engine='{p.engine}' is not one of {ENGINES}")
    if p.engine != "deepspeed":
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("config: parallel.engine=deepspeed needs the 'deepspeed' package; "
                          "pip install 'triforge[deepspeed]' or use parallel.engine=fsdp2")
    if p.zero_stage not in (1, 2, 3):
        raise ConfigError(f"config: parallel.zero_stage({p.zero_stage}) must be 1, 2 or 3")
    others = {"tp": p.tp, "pp": p.pp, "cp": p.cp, "ep": p.ep}
    if any(v != 1 for v in others.values()) or job.model.moe.num_experts:
        raise ConfigError("config: parallel.engine=deepspeed is data parallelism of a dense "
                          "model only (tp = pp = cp = ep = 1); use parallel.engine=fsdp2")
    unsupported = {
        # DeepSpeed drops a step's gradients only when they are non-finite (engine.skip)
        "trainer.spike_zscore": job.trainer.spike_zscore > 0,
        "trainer.compile": job.trainer.compile,
        "layer dropping": job.layer_drop.enabled,
    }
    missing = [name for name, asked in unsupported.items() if asked]
    if missing:
        raise ConfigError("config: parallel.engine=deepspeed does not support "
                          f"{', '.join(missing)} yet; use parallel.engine=fsdp2")
    if job.precision.dtype == "fp16":
        check_deepspeed_fp16(job)


def check_deepspeed_fp16(job: JobConfig) -> None:
    """DeepSpeed's loss scaler moves by factors of 2 over powers of two, from an integer
    floor; and DeepSpeed refuses fp16 on a CPU without oneDNN's fp16 kernels."""
    cfg = job.precision
    if cfg.growth_factor != 2 or cfg.backoff_factor != 0.5:
        raise ConfigError("config: precision=fp16 under parallel.engine=deepspeed scales by 2 "
                          "and 1/2; set precision.growth_factor=2 precision.backoff_factor=0.5")
    if math.log2(cfg.initial_scale) % 1 or cfg.min_scale % 1:
        raise ConfigError(f"config: precision.initial_scale({cfg.initial_scale}) must be a "
                          f"power of two and precision.min_scale({cfg.min_scale}) a whole "
                          "number under parallel.engine=deepspeed")
    on_cpu = pick_device(job.trainer.device, ProcessEnv()).type == "cpu"
    if job.debug.deepspeed_cpu_fp16 or not on_cpu:
        return
    from deepspeed.accelerator import get_accelerator

    if not get_accelerator().is_fp16_supported():
        raise ConfigError("config: DeepSpeed refuses precision=fp16 on this CPU (no oneDNN fp16 "
                          "kernels); use precision=bf16, or a GPU")

