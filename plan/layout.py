"""What the planner plans for: a workload (model, batch, dtype) and a candidate layout."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from triforge.models import build_model
from triforge.models.config import ModelConfig

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Workload:
    model: ModelConfig
    vocab: int  # the padded embedding size
    seq_len: int
    batch_size: int  # global batch, in sequences
    dtype: str = "bf16"  # compute (and activation) dtype; master weights stay fp32

    @property
    def act_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @cached_property
    def param_shapes(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """(name, shape) of every parameter of the whole model, from a meta-device build."""
        with torch.device("meta"):
            model = build_model(self.model, vocab_size=self.vocab, attention_backend="sdpa")
        return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


@dataclass(frozen=True)
class Layout:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    schedule: str = "1f1b"  # gpipe | 1f1b | interleaved_1f1b | zero_bubble (pp > 1)
    virtual: int = 1  # stages per pipeline rank
    micro_batch: int = 1  # sequences per microbatch
    ac: str = "none"  # none | selective | full
    ac_every: int = 2
    sequence_parallel: bool = True
    reshard_after_forward: bool = True

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    def microbatches(self, work: Workload) -> int:
        """Microbatches per rank and step (gradient accumulation, or pipeline microbatches)."""
        return work.batch_size // self.dp // self.micro_batch

    def overrides(self) -> list[str]:
        """The triforge-train arguments that select this layout."""
        args = [f"parallel.dp_replicate={self.dp_replicate}", f"parallel.dp_shard={self.dp_shard}",
                f"parallel.tp={self.tp}", f"parallel.pp={self.pp}",
                f"trainer.micro_batch_size={self.micro_batch}",
                f"parallel.activation_checkpoint={self.ac}"]
        if self.pp > 1:
            args += [f"parallel.pp_schedule={self.schedule}",
                     f"parallel.pp_virtual_stages={self.virtual}"]
        return args


def workload_from_job(job) -> Workload:
    """The workload of a composed job config (``load_config``). Without a fixed vocabulary
    the tokenizer's decides it; the planner assumes the byte tokenizer's, padded."""
    model = job.model
    return Workload(model=model, vocab=model.vocab_size or model.padded_vocab(258),
                    seq_len=job.trainer.seq_len, batch_size=job.trainer.batch_size,
                    dtype=job.precision.dtype)


def layout_from_job(job, world_size: int) -> Layout:
    """The layout a job config asks for on ``world_size`` ranks (dp_shard=-1: the ranks the
    other degrees leave, as ``ParallelDims`` resolves it)."""
    p, t = job.parallel, job.trainer
    dp_shard = p.dp_shard if p.dp_shard != -1 else world_size // (p.dp_replicate * p.tp * p.pp)
    micro = t.micro_batch_size or t.batch_size // (p.dp_replicate * dp_shard)
    return Layout(dp_replicate=p.dp_replicate, dp_shard=dp_shard, tp=p.tp, pp=p.pp,
                  schedule=p.pp_schedule, virtual=p.pp_virtual_stages, micro_batch=micro,
                  ac=p.activation_checkpoint, ac_every=p.ac_every,
                  sequence_parallel=p.sequence_parallel,
                  reshard_after_forward=p.fsdp_reshard_after_forward)
