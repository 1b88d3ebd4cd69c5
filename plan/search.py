"""Candidate layouts for a cluster, each with its predictions, ranked by step time.

Step time = compute x pipeline stretch + exposed communication:

- compute: the step's FLOPs per rank (6N + 12 L h s per token, plus the recomputed forward
  of checkpointed blocks) at ``efficiency`` x the device's dense peak. ``efficiency`` is an
  assumption (default 0.5: what tuned bf16 training sustains on large GEMMs, attention and
  the memory-bound ops between them), not a measurement; ``make bench`` prints how far the
  prediction lands from published runs;
- pipeline stretch: 1 / (1 - bubble) (schedule.py);
- tensor- and pipeline-parallel traffic is on the critical path and counts in full; data-
  parallel traffic (FSDP gathers and reductions, replica all-reduces) overlaps compute
  and counts only where it exceeds it.

A layout is rejected, with the reason, when the trainer would refuse it (the same checks
``ParallelDims`` runs at start-up), when tensor parallelism would span nodes, or when the
predicted memory exceeds ``MEMORY_FRACTION`` of the device's (the rest: CUDA context,
communication buffers and allocator fragmentation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from triforge.parallel.dims import ParallelConfig, ParallelDims
from triforge.trainer.flops import flops_per_token

from .comm import comm_bytes, comm_seconds
from .hardware import Device
from .layout import Layout, Workload
from .memory import activation_bytes, block_params, state_bytes, transient_bytes
from .schedule import bubble_fraction

MEMORY_FRACTION = 0.9
SCHEDULES = (("1f1b", 1), ("interleaved_1f1b", 2), ("zero_bubble", 2), ("gpipe", 1))
AC_MODES = ("none", "selective", "full")
MICRO_BATCHES = (1, 2, 4, 8)


@dataclass
class Prediction:
    layout: Layout
    memory: dict[str, float] = field(default_factory=dict)  # bytes on the most loaded rank
    comm_bytes: dict[str, float] = field(default_factory=dict)
    comm_seconds: dict[str, float] = field(default_factory=dict)
    bubble: float = 0.0
    compute_s: float = 0.0
    step_s: float = 0.0
    tokens_per_s_per_gpu: float = 0.0
    mfu: float = 0.0
    rejected: str = ""


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def trainer_rules(work: Workload, layout: Layout) -> str:
    """The reason the trainer would refuse ``layout`` at start-up, or ''."""
    cfg = ParallelConfig(dp_replicate=layout.dp_replicate, dp_shard=layout.dp_shard,
                         tp=layout.tp, pp=layout.pp, pp_schedule=layout.schedule,
                         pp_virtual_stages=layout.virtual)
    try:
        dims = ParallelDims.from_config(cfg, layout.world_size)
        m = work.model
        dims.validate_model(n_heads=m.n_heads, n_kv_heads=m.kv_heads, n_layers=m.n_layers)
        dims.validate_batch(batch_size=work.batch_size, micro_batch_size=layout.micro_batch,
                            pp_microbatches=0)
        if layout.pp > 1:
            dims.validate_pipeline(cfg, n_layers=m.n_layers,
                                   microbatches=layout.microbatches(work))
    except ValueError as exc:
        return str(exc)
    if work.vocab % layout.tp or work.model.hidden_dim % layout.tp:
        return f"tp({layout.tp}) must divide the vocabulary({work.vocab}) and ffn hidden"
    return ""


def memory_of(work: Workload, layout: Layout) -> dict[str, float]:
    """Bytes on the most loaded rank: the first pipeline rank's activations (it keeps the
    most microbatches in flight) with the larger state of the first and the last rank (the
    embedding's or the head's). The last rank's head activations are left out: it holds
    fewer microbatches, which for transformer shapes more than makes up for them."""
    first = {**state_bytes(work, layout, 0), "activations": activation_bytes(work, layout),
             "fsdp_buffers": transient_bytes(work, layout)}
    last = {**state_bytes(work, layout, layout.pp - 1), "activations": first["activations"],
            "fsdp_buffers": first["fsdp_buffers"]}
    return max(first, last, key=lambda d: sum(d.values()))


def predict(work: Workload, layout: Layout, device: Device, *, gpus_per_node: int,
            efficiency: float) -> Prediction:
    pred = Prediction(layout)
    if layout.tp > gpus_per_node:
        pred.rejected = f"tp({layout.tp}) spans nodes (gpus_per_node={gpus_per_node})"
        return pred
    pred.rejected = trainer_rules(work, layout)
    if pred.rejected:
        return pred
    pred.memory = memory_of(work, layout)
    total = sum(pred.memory.values())
    if total > MEMORY_FRACTION * device.memory_bytes:
        pred.rejected = (f"needs {total / 2**30:.1f} GiB per rank, over "
                         f"{MEMORY_FRACTION:.0%} of {device.memory_bytes / 2**30:.0f} GiB")
    cfg = work.model
    per_token = flops_per_token(cfg.num_params(work.vocab, embedding=False, active=True),
                                cfg.n_layers, cfg.d_model, work.seq_len)
    recompute = {"none": 0.0, "full": 1.0, "selective": 1 / layout.ac_every}[layout.ac]
    # The recomputed forward of every block, per token: 2 FLOPs per parameter + attention.
    block_fwd = cfg.n_layers * (2 * block_params(work) + 4 * cfg.d_model * work.seq_len)
    tokens = work.batch_size * work.seq_len / layout.world_size
    pred.compute_s = tokens * (per_token + recompute * block_fwd) / (efficiency * device.peak_flops)
    pred.bubble = bubble_fraction(layout, layout.microbatches(work))
    pred.comm_bytes = comm_bytes(work, layout)
    pred.comm_seconds = comm_seconds(pred.comm_bytes, layout, device, gpus_per_node)
    exposed = sum(v for k, v in pred.comm_seconds.items() if k in ("tp", "pp"))
    data_parallel = sum(v for k, v in pred.comm_seconds.items() if k.startswith("dp"))
    pred.step_s = (pred.compute_s / (1 - pred.bubble) + exposed
                   + max(0.0, data_parallel - pred.compute_s))
    pred.tokens_per_s_per_gpu = tokens / pred.step_s
    pred.mfu = tokens * per_token / pred.step_s / device.peak_flops
    return pred


def candidates(work: Workload, world_size: int) -> list[Layout]:
    """Every layout of ``world_size`` ranks over the degrees, schedules, microbatch sizes
    and checkpointing modes the trainer supports (tp a power of two)."""
    out = []
    for tp in (t for t in divisors(world_size) if t & (t - 1) == 0):
        for pp in divisors(world_size // tp):
            dp = world_size // tp // pp
            for dp_shard in divisors(dp):
                for schedule, virtual in SCHEDULES if pp > 1 else (("1f1b", 1),):
                    for mbs in MICRO_BATCHES:
                        for ac in AC_MODES:
                            out.append(Layout(dp_replicate=dp // dp_shard, dp_shard=dp_shard,
                                              tp=tp, pp=pp, schedule=schedule,
                                              virtual=virtual, micro_batch=mbs, ac=ac))
    return out


def plan(work: Workload, world_size: int, device: Device, *, gpus_per_node: int,
         efficiency: float = 0.5) -> tuple[list[Prediction], list[Prediction]]:
    """(layouts that fit, fastest first; rejected layouts with their reasons)."""
    preds = [predict(work, lay, device, gpus_per_node=gpus_per_node, efficiency=efficiency)
             for lay in candidates(work, world_size)]
    # Ties (compute-bound layouts) go to the one with less communication, then less memory.
    fits = sorted((p for p in preds if not p.rejected),
                  key=lambda p: (p.step_s, sum(p.comm_seconds.values()), sum(p.memory.values())))
    return fits, [p for p in preds if p.rejected]
