"""Parallel degrees: validated once, against the world size, before any process group work."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ParallelConfig:
    """Degrees of each mesh dimension; ``dp_shard=-1`` takes the ranks the others leave."""

    dp_replicate: int = 1
    dp_shard: int = -1
    tp: int = 1
    pp: int = 1
    ep: int = 1  # reserved for mixture-of-experts models
    sequence_parallel: bool = True  # with tp > 1: shard norms/residuals along the sequence
    fsdp_reshard_after_forward: bool = True  # ZeRO-3; false keeps gathered params (ZeRO-2-like)
    timeout_s: int = 600  # collective timeout: how long a rank waits for a stuck peer
    pp_schedule: str = "1f1b"  # gpipe | 1f1b | interleaved_1f1b | zero_bubble
    pp_virtual_stages: int = 1  # stages per pipeline rank (interleaved schedules: >= 2)
    microbatches: int = 0  # pipeline microbatches per step; 0: per-rank batch / micro_batch_size
    pp_layers_per_stage: list[int] = field(default_factory=list)  # empty: balanced
    activation_checkpoint: str = "none"  # none | full | selective (every ac_every-th block)
    ac_every: int = 2


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    pp: int
    ep: int
    world_size: int

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world_size: int) -> ParallelDims:
        """Resolve ``dp_shard=-1`` and check that the degrees multiply to the world size."""
        if cfg.activation_checkpoint not in ("none", "full", "selective"):
            raise ValueError(f"parallel.activation_checkpoint='{cfg.activation_checkpoint}' "
                             "must be none, full or selective")
        if cfg.ac_every < 1:
            raise ValueError(f"parallel.ac_every({cfg.ac_every}) must be >= 1")
        if cfg.ep != 1:
            raise ValueError(f"parallel.ep({cfg.ep}) needs a mixture-of-experts model; use 1")
        for name in ("dp_replicate", "tp", "pp"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"parallel.{name}({getattr(cfg, name)}) must be >= 1")
        others = cfg.dp_replicate * cfg.tp * cfg.pp
        dp_shard = cfg.dp_shard
        if dp_shard == -1:
            if world_size % others:
                raise ValueError(
                    f"dp_replicate({cfg.dp_replicate}) * tp({cfg.tp}) * pp({cfg.pp}) = {others} "
                    f"does not divide WORLD_SIZE({world_size})"
                )
            dp_shard = world_size // others
        elif dp_shard < 1:
            raise ValueError(f"parallel.dp_shard({dp_shard}) must be >= 1 or -1")
        if others * dp_shard != world_size:
            raise ValueError(
                f"dp_replicate({cfg.dp_replicate}) * dp_shard({dp_shard}) * tp({cfg.tp}) * "
                f"pp({cfg.pp}) = {others * dp_shard} != WORLD_SIZE({world_size})"
            )
        return cls(cfg.dp_replicate, dp_shard, cfg.tp, cfg.pp, cfg.ep, world_size)

    def mesh_shape(self) -> dict[str, int]:
        """Named degrees in rank order: pp outermost, tp innermost (Megatron-Core and
        torchtitan convention, so tensor-parallel peers are neighbouring ranks on one node)."""
        return {"pp": self.pp, "dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard,
                "tp": self.tp}

    def build_mesh(self, device_type: str):
        """(mesh, dp_mesh): one named DeviceMesh over every rank, and the 1-D mesh of the
        ranks that read different data (dp_replicate x dp_shard flattened)."""
        from torch.distributed.device_mesh import init_device_mesh

        names, sizes = zip(*self.mesh_shape().items(), strict=True)
        mesh = init_device_mesh(device_type, sizes, mesh_dim_names=names)
        dp_mesh = mesh["dp_replicate", "dp_shard"]._flatten(mesh_dim_name="dp")
        return mesh, dp_mesh

    @property
    def dp(self) -> int:
        """Ranks that read different data: replicas times shards."""
        return self.dp_replicate * self.dp_shard

    def validate_model(self, *, n_heads: int, n_kv_heads: int, n_layers: int) -> None:
        if n_heads % self.tp or n_kv_heads % self.tp:
            raise ValueError(
                f"tp({self.tp}) must divide n_heads({n_heads}) and n_kv_heads({n_kv_heads})"
            )
        if n_layers < self.pp:
            raise ValueError(f"n_layers({n_layers}) must be >= pp({self.pp}) pipeline stages")
