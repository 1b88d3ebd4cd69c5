"""Parallel degrees and the layout rules, checked once against the world size and the job,
before any process group exists; every rule's error shows its arithmetic.

Mesh dimensions, in rank order (pp outermost, tp innermost: the convention of Megatron-Core
and torchtitan, so tensor-parallel peers are neighbouring ranks on one node)::

    pp, dp_replicate, dp_shard_out_ep, dp_shard_in_ep, cp, tp

``dp_shard`` is split in two so that expert parallelism can borrow part of it. The ranks
play these roles (``ROLE_DIMS``), each a flattened group of mesh dimensions:

- ``dp``: the ranks that read different data (replicas x shards);
- ``fsdp``: the dense parameters' FSDP shards, dp_shard x cp (context-parallel ranks hold
  the same parameters, so they shard them too); with dp_replicate > 1 it is HSDP over
  (dp_replicate, fsdp);
- ``loss``: the ranks whose losses make up one global batch mean, dp x cp;
- ``ep``: expert parallelism. It borrows ranks as torchtitan does (with expert tensor
  parallelism off): an expert group spans all cp x tp ranks and a factor of dp_shard, so
  ``ep = dp_shard_in_ep * cp * tp``. Rule: ep must be a multiple of cp * tp and
  ep / (cp * tp) must divide dp_shard. Every rank of an expert group then holds different
  experts and sees the tokens of the whole group;
- ``expert_fsdp``: what ep leaves of dp_shard, over which the experts' weights are sharded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MESH_DIMS = ("pp", "dp_replicate", "dp_shard_out_ep", "dp_shard_in_ep", "cp", "tp")
ROLE_DIMS = {
    "dp": ("dp_replicate", "dp_shard_out_ep", "dp_shard_in_ep"),
    "fsdp": ("dp_shard_out_ep", "dp_shard_in_ep", "cp"),
    "loss": ("dp_replicate", "dp_shard_out_ep", "dp_shard_in_ep", "cp"),
    "ep": ("dp_shard_in_ep", "cp", "tp"),
    "expert_fsdp": ("dp_shard_out_ep",),
}


@dataclass
class ParallelConfig:
    """Degrees of each mesh dimension; ``dp_shard=-1`` takes the ranks the others leave."""

    dp_replicate: int = 1
    dp_shard: int = -1
    cp: int = 1  # context parallelism: each rank holds 1/cp of every sequence
    cp_comm: str = "p2p"  # how ring attention moves keys/values: p2p | allgather
    tp: int = 1
    pp: int = 1
    ep: int = 1  # expert parallelism (mixture-of-experts models), borrowed from dp_shard x cp x tp
    sequence_parallel: bool = True  # with tp > 1: shard norms/residuals along the sequence
    fsdp_reshard_after_forward: bool = True  # ZeRO-3; false keeps gathered params (ZeRO-2-like)
    timeout_s: int = 600  # collective timeout: how long a rank waits for a stuck peer
    pp_schedule: str = "1f1b"  # gpipe | 1f1b | interleaved_1f1b | zero_bubble
    pp_virtual_stages: int = 1  # stages per pipeline rank (interleaved schedules: >= 2)
    microbatches: int = 0  # pipeline microbatches per step; 0: per-rank batch / micro_batch_size
    pp_layers_per_stage: list[int] = field(default_factory=list)  # empty: balanced
    activation_checkpoint: str = "none"  # none | full | selective (every ac_every-th block)
    ac_every: int = 2
    # The data-parallel engine: fsdp2 (our own, every layout) or deepspeed (ZeRO, data
    # parallelism only: trainer/deepspeed_engine.py), with its ZeRO stage, CPU offload of
    # the optimizer state or the parameters, and a JSON merged onto the generated config.
    engine: str = "fsdp2"
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    deepspeed_config: str = ""


@dataclass(frozen=True, kw_only=True)
class ParallelDims:
    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    cp: int = 1
    tp: int = 1
    ep: int = 1
    world_size: int = 1

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world_size: int) -> ParallelDims:
        """Resolve ``dp_shard=-1`` and check that the degrees multiply to the world size."""
        if cfg.activation_checkpoint not in ("none", "full", "selective"):
            raise ValueError(f"parallel.activation_checkpoint='{cfg.activation_checkpoint}' "
                             "must be none, full or selective")
        if cfg.ac_every < 1:
            raise ValueError(f"parallel.ac_every({cfg.ac_every}) must be >= 1")
        if cfg.timeout_s <= 0:
            raise ValueError(f"parallel.timeout_s({cfg.timeout_s}) must be > 0")
        if cfg.pp_virtual_stages < 1 or cfg.microbatches < 0:
            raise ValueError(f"parallel.pp_virtual_stages({cfg.pp_virtual_stages}) must be >= 1 "
                             f"and parallel.microbatches({cfg.microbatches}) >= 0")
        _check_schedule(cfg.pp_schedule)
        for name in ("dp_replicate", "cp", "tp", "pp", "ep"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"parallel.{name}({getattr(cfg, name)}) must be >= 1")
        others = cfg.dp_replicate * cfg.cp * cfg.tp * cfg.pp
        named = f"dp_replicate({cfg.dp_replicate}) * cp({cfg.cp}) * tp({cfg.tp}) * pp({cfg.pp})"
        dp_shard = cfg.dp_shard
        if dp_shard == -1:
            if world_size % others:
                raise ValueError(f"{named} = {others} does not divide WORLD_SIZE({world_size})")
            dp_shard = world_size // others
        elif dp_shard < 1:
            raise ValueError(f"parallel.dp_shard({dp_shard}) must be >= 1 or -1")
        if others * dp_shard != world_size:
            raise ValueError(
                f"dp_replicate({cfg.dp_replicate}) * dp_shard({dp_shard}) * cp({cfg.cp}) * "
                f"tp({cfg.tp}) * pp({cfg.pp}) = {others * dp_shard} != WORLD_SIZE({world_size})"
            )
        dims = cls(pp=cfg.pp, dp_replicate=cfg.dp_replicate, dp_shard=dp_shard, cp=cfg.cp,
                   tp=cfg.tp, ep=cfg.ep, world_size=world_size)
        dims._check_ep()
        return dims

    def _check_ep(self) -> None:
        span = self.cp * self.tp
        if self.ep == 1:
            return
        if self.ep % span or self.dp_shard % (self.ep // span):
            raise ValueError(
                f"parallel.ep({self.ep}) must be cp({self.cp}) * tp({self.tp}) = {span} times a "
                f"divisor of dp_shard({self.dp_shard}): an expert group spans the cp x tp ranks "
                "and part of dp_shard"
            )

    @property
    def dp(self) -> int:
        """Ranks that read different data: replicas times shards."""
        return self.dp_replicate * self.dp_shard

    @property
    def dp_shard_in_ep(self) -> int:
        return self.ep // (self.cp * self.tp) if self.ep > 1 else 1

    @property
    def fsdp_enabled(self) -> bool:
        """Whether FSDP wraps the model: the one place this is decided. Any data or context
        parallelism needs it (gradients are reduced, parameters sharded or replicated)."""
        return self.dp_replicate * self.dp_shard * self.cp > 1

    def mesh_shape(self) -> dict[str, int]:
        """Named degrees of every mesh dimension, in rank order (``MESH_DIMS``)."""
        return {"pp": self.pp, "dp_replicate": self.dp_replicate,
                "dp_shard_out_ep": self.dp_shard // self.dp_shard_in_ep,
                "dp_shard_in_ep": self.dp_shard_in_ep, "cp": self.cp, "tp": self.tp}

    def rank_groups(self) -> dict[str, list[list[int]]]:
        """Rank groups of every mesh dimension and every role: ranks in one inner list form
        one process group. Pure arithmetic: what ``build_meshes`` creates, without it."""
        shape = self.mesh_shape()
        grid = np.arange(self.world_size).reshape(tuple(shape.values()))
        groups = {name: _groups(grid, [i]) for i, name in enumerate(MESH_DIMS)}
        for role, dims in ROLE_DIMS.items():
            groups[role] = _groups(grid, [MESH_DIMS.index(d) for d in dims])
        groups["dp_shard"] = _groups(grid, [MESH_DIMS.index("dp_shard_out_ep"),
                                            MESH_DIMS.index("dp_shard_in_ep")])
        return groups

    def validate_model(self, *, n_heads: int, n_kv_heads: int, n_layers: int,
                       num_experts: int = 0) -> None:
        if n_heads % self.tp or n_kv_heads % self.tp:
            raise ValueError(
                f"tp({self.tp}) must divide n_heads({n_heads}) and n_kv_heads({n_kv_heads})"
            )
        if n_layers < self.pp:
            raise ValueError(f"n_layers({n_layers}) must be >= pp({self.pp}) pipeline stages")
        if self.ep > 1 and not num_experts:
            raise ValueError(f"parallel.ep({self.ep}) needs a mixture-of-experts model; use 1")
        if self.ep > 1 and num_experts % self.ep:
            raise ValueError(f"parallel.ep({self.ep}) must divide model.moe.num_experts"
                             f"({num_experts})")
        if self.ep > 1 and self.dp_replicate > 1:
            raise ValueError(f"parallel.ep({self.ep}) is supported with FSDP (dp_shard), tensor "
                             "and pipeline parallelism so far: set parallel.dp_replicate=1")
        if num_experts and self.tp > 1 and self.ep == 1:
            raise ValueError(f"tp({self.tp}) with mixture-of-experts layers splits the experts "
                             "over the tp ranks by expert parallelism: set parallel.ep to a "
                             f"multiple of tp, e.g. parallel.ep={self.tp}")

    def validate_pipeline(self, cfg: ParallelConfig, *, n_layers: int, microbatches: int) -> None:
        """Schedule, stage count and microbatches of a pipeline (pp > 1)."""
        from .pipeline import MULTI_STAGE, stage_layers

        if cfg.pp_schedule not in MULTI_STAGE and cfg.pp_virtual_stages != 1:
            raise ValueError(f"parallel.pp_schedule={cfg.pp_schedule} runs one stage per "
                             f"rank; set parallel.pp_virtual_stages=1 or use interleaved_1f1b")
        stages = self.pp * cfg.pp_virtual_stages
        if n_layers < stages:
            raise ValueError(f"n_layers({n_layers}) must be >= pp({self.pp}) * "
                             f"pp_virtual_stages({cfg.pp_virtual_stages}) = {stages} stages")
        stage_layers(n_layers, stages, cfg.pp_layers_per_stage)  # ValueError if it cannot split
        if microbatches < self.pp:
            raise ValueError(f"parallel.pp({self.pp}) needs at least {self.pp} microbatches "
                             f"per step, got {microbatches}; set trainer.micro_batch_size or "
                             "parallel.microbatches")

    def validate_batch(self, *, batch_size: int, micro_batch_size: int,
                       pp_microbatches: int) -> None:
        """The global batch splits evenly over data-parallel ranks and microbatches."""
        if batch_size % self.dp:
            raise ValueError(f"trainer.batch_size({batch_size}) must be divisible by "
                             f"dp({self.dp})")
        per_rank = batch_size // self.dp
        if micro_batch_size and per_rank % micro_batch_size:
            raise ValueError(
                f"trainer.batch_size({batch_size}) / dp({self.dp}) = {per_rank} must be "
                f"divisible by trainer.micro_batch_size({micro_batch_size})"
            )
        if self.pp > 1 and pp_microbatches and per_rank % pp_microbatches:
            raise ValueError(
                f"trainer.batch_size({batch_size}) must be divisible by dp({self.dp}) * "
                f"parallel.microbatches({pp_microbatches}) = {self.dp * pp_microbatches}"
            )


def _check_schedule(name: str) -> None:
    from .pipeline import SCHEDULES

    if name not in SCHEDULES:
        raise ValueError(f"parallel.pp_schedule='{name}' is not one of {sorted(SCHEDULES)}")


def _groups(grid: np.ndarray, axes: list[int]) -> list[list[int]]:
    """The rank groups spanning ``axes`` of the rank ``grid`` (flattened in that order)."""
    size = int(np.prod([grid.shape[a] for a in axes]))
    moved = np.moveaxis(grid, axes, list(range(grid.ndim - len(axes), grid.ndim)))
    return moved.reshape(-1, size).tolist()
