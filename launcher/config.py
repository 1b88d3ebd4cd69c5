"""The job config: typed dataclasses (the schema) composed by Hydra from configs/.

``load_config(overrides)`` is the single way a config is built, for the CLIs and the tests:
Hydra composes YAML groups and CLI overrides against the schema (unknown keys and wrong types
fail there), then ``validate`` checks values and cross-field rules. Every failure becomes a
``ConfigError`` with one line that names the field and the rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from triforge.errors import ConfigError
from triforge.kernels.attention import BACKENDS, check_backend_available
from triforge.kernels.rmsnorm import check_norm_impl
from triforge.models.config import ModelConfig
from triforge.parallel.dims import ParallelConfig
from triforge.trainer.config import (
    CheckpointConfig,
    GenerateConfig,
    LoggingConfig,
    OptimConfig,
    TrainerConfig,
)
from triforge.trainer.data.config import DataConfig
from triforge.trainer.layer_drop import LayerDropConfig
from triforge.trainer.numerics import DebugConfig
from triforge.trainer.objectives import ObjectiveConfig
from triforge.trainer.optim import check_optim_impl
from triforge.trainer.precision import PrecisionConfig

from .schema import GROUPS, check_finite, check_overrides


@dataclass
class RunConfig:
    dir: str = "runs/default"


@dataclass
class AttentionConfig:
    backend: str = "auto"


@dataclass
class JobConfig:
    run: RunConfig = field(default_factory=RunConfig)
    seed: int = 1234
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    layer_drop: LayerDropConfig = field(default_factory=LayerDropConfig)


def _register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="job_schema", node=JobConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="precision", name="precision_schema", node=PrecisionConfig)
    cs.store(group="objective", name="objective_schema", node=ObjectiveConfig)


def validate(job: JobConfig) -> None:
    """Value and cross-field checks; raises ValueError with the arithmetic in the message."""
    job.model.validate()
    job.data.validate()
    job.objective.validate()
    job.trainer.validate()
    job.optim.validate()
    job.checkpoint.validate()
    job.precision.validate()
    job.debug.validate()
    job.generate.validate()
    job.layer_drop.validate()
    job.logging.validate()
    if not 0 <= job.seed < 2**32:
        raise ValueError(f"seed({job.seed}) must be in [0, 2**32): NumPy seeds are 32-bit")
    t = job.trainer
    if t.seq_len > job.model.max_seq_len:
        raise ValueError(
            f"trainer.seq_len({t.seq_len}) exceeds model.max_seq_len({job.model.max_seq_len})"
        )
    if t.stop_at_step and t.stop_at_step > t.max_steps:
        raise ValueError(f"trainer.stop_at_step({t.stop_at_step}) > max_steps({t.max_steps})")
    if job.attention.backend not in BACKENDS:
        raise ValueError(f"attention.backend='{job.attention.backend}' is not one of {BACKENDS}")
    check_backend_available(job.attention.backend)
    check_optim_impl(job.optim.impl)
    check_norm_impl(job.model.norm_impl,
                    interpreter=os.environ.get("TRITON_INTERPRET") == "1")


def _one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span lines and causes; keep the first line of each cause."""
    parts: list[str] = []
    while exc is not None and len(parts) < 3:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        if lines and "$VALUE" not in lines[0]:
            first = lines[0].rstrip(".")
            parts.append(first)
        if "Available options" in str(exc):  # an unknown group choice, e.g. model=nope
            options = str(exc).split("Available options", 1)[1].split("Config search path")[0]
            names = [ln.strip() for ln in options.splitlines()[1:] if ln.strip()]
            parts.append("choose one of " + ", ".join(n for n in names if "schema" not in n))
        exc = exc.__cause__
    return ": ".join(parts) or "invalid configuration"


def presets() -> dict[str, list[str]]:
    """The preset names of each config group (the YAML files in configs/<group>/)."""
    root = resources.files("triforge.configs")
    return {group: sorted(f.name.removesuffix(".yaml") for f in (root / group).iterdir()
                          if f.name.endswith(".yaml")) for group in GROUPS}


def load_config(overrides: list[str]) -> JobConfig:
    """Compose configs/ with ``overrides`` (Hydra syntax) into a validated ``JobConfig``."""
    _register()
    try:
        check_overrides(list(overrides), JobConfig, presets=presets())
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    try:
        with initialize_config_module(config_module="triforge.configs", version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        # Merging into the schema rejects keys that `+key=value` overrides slipped in.
        schema = OmegaConf.structured(JobConfig)
        OmegaConf.set_struct(schema, True)
        plain = OmegaConf.to_container(cfg, resolve=True)
        job = OmegaConf.to_object(OmegaConf.merge(schema, plain))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"config: {_one_line(exc)}") from None
    try:
        check_finite(job)
        validate(job)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    return job


def load_run_config(saved_yaml: Path, overrides: list[str]) -> JobConfig:
    """A run's saved ``config.yaml`` with ``key=value`` overrides on top (no group choices:
    the run's model and data are what its checkpoints hold)."""
    schema = OmegaConf.structured(JobConfig)
    OmegaConf.set_struct(schema, True)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.load(saved_yaml), OmegaConf.from_dotlist(overrides))
        job = OmegaConf.to_object(merged)
        check_finite(job)
        validate(job)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"config ({saved_yaml}): {_one_line(exc)}") from None
    return job


def to_yaml(job: JobConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(job))
