"""Memory per rank: training state (exact) and activations (our block's formula).

State. Master weights, gradients and AdamW's two moments are fp32, whatever the compute
dtype (FSDP gathers parameters in the compute dtype and reduces gradients in fp32), so a
parameter element costs 4 + 4 + 8 = 16 bytes, plus AdamW's 4-byte step counter per tensor.
Tensor parallelism splits the matrices (columns of wq/wk/wv/w1/w3, the vocabulary of the
embedding and head, rows of wo/w2; norms are replicated); FSDP then splits every tensor's
dim 0 over dp_shard with FSDP2's rule (chunks of ceil(d0 / n) rows: rank 0 holds the
largest). This is ZeRO-3 over dp_shard and Megatron's TP/PP split, counted per tensor.

Activations. What autograd saves in one block for one microbatch, from the ops our block
runs (e bytes per activation element, s*b tokens, width h, a heads, kv/a = k, SwiGLU
hidden f). Measured against saved tensors by ``make bench``:

    norms (2):  fp32 copy of the input (the input itself in fp32) 4 + normalized e, + rstd
    norm outputs, saved full-sequence by the projections that read them: 2 * e
    attention:  q e, k and v 2 k e, output e, log-sum-exp 4 bytes per head and token
    SwiGLU:     w1 x, silu(w1 x), w3 x and their product: 4 e f / h

    per block = s*b*h * (2 (4 + e) / t_sp + 2 e + e (2 + 2k + 4 f / h) / t) + 4 s b (2 / t_sp + a / t)

with t the tensor-parallel degree and t_sp = t under sequence parallelism (norms see 1/t of
the sequence), else 1. Korthikanti et al.'s 34 + 5as/h is the same count for a GPT block
with dropout, LayerNorm and materialized attention scores; flash-style attention keeps only
the log-sum-exp, so there is no s^2 term. Full checkpointing keeps each block's input (e per
element) and recomputes one block at a time in backward.
"""

from __future__ import annotations

import math

from triforge.parallel.pipeline import stage_layers

from .layout import Layout, Workload

COLWISE = ("wq", "wk", "wv", "w1", "w3", "output", "tok_embeddings")
ROWWISE = ("wo", "w2")
BYTES_PER_ELEMENT = 4 + 4 + 8  # fp32 master weight, fp32 gradient, AdamW exp_avg + exp_avg_sq
STEP_BYTES = 4  # AdamW's fp32 step counter, one per parameter tensor


def tp_local_shape(name: str, shape: tuple[int, ...], tp: int) -> tuple[int, ...]:
    module = name.rsplit(".", 2)[-2]
    if module in COLWISE:
        return (shape[0] // tp, *shape[1:])
    if module in ROWWISE:
        return (shape[0], shape[1] // tp)
    return shape


def fsdp_shard_numel(shape: tuple[int, ...], n: int) -> int:
    """Elements of rank 0's FSDP2 shard (the largest) of a tensor split on dim 0 over n."""
    return -(-shape[0] // n) * math.prod(shape[1:])


def rank_stages(layout: Layout, pp_rank: int) -> list[int]:
    """Stage ids a pipeline rank holds: r, r + pp, ... (what the schedules expect)."""
    return list(range(pp_rank, layout.pp * layout.virtual, layout.pp))


def rank_layers(work: Workload, layout: Layout, pp_rank: int) -> int:
    """Blocks a pipeline rank holds, over all its stages."""
    per_stage = stage_layers(work.model.n_layers, layout.pp * layout.virtual, [])
    return sum(len(per_stage[sid]) for sid in rank_stages(layout, pp_rank))


def block_params(work: Workload) -> float:
    """Parameters of one block (the model's, less the embedding, head and final norm)."""
    cfg = work.model
    head = 0 if cfg.tie_embeddings else work.vocab * cfg.d_model
    return (cfg.num_params(work.vocab, embedding=False) - cfg.d_model - head) / cfg.n_layers


def rank_params(work: Workload, layout: Layout, pp_rank: int) -> list[tuple[str, tuple]]:
    """(name, full shape) of the parameters pipeline rank ``pp_rank`` holds. A tied embedding
    split across the pipeline has a copy on each end (Megatron's embedding group)."""
    n_stages = layout.pp * layout.virtual
    stages = rank_stages(layout, pp_rank)
    per_stage = stage_layers(work.model.n_layers, n_stages, [])
    layers = {str(i) for sid in stages for i in per_stage[sid]}
    first, last = 0 in stages, n_stages - 1 in stages
    held = []
    for name, shape in work.param_shapes:
        parts = name.split(".")
        if parts[0] == "layers":
            keep = parts[1] in layers
        elif parts[0] == "tok_embeddings":
            keep = first
        else:  # final norm and head
            keep = last
        if keep:
            held.append((name, shape))
    if work.model.tie_embeddings and last and not first:
        emb = next(s for n, s in work.param_shapes if n.startswith("tok_embeddings"))
        held.append(("output.weight", emb))
    return held


def state_bytes(work: Workload, layout: Layout, pp_rank: int = 0) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state on the largest rank of pipeline
    rank ``pp_rank`` (tensor and FSDP rank 0)."""
    elements = grads = tensors = 0
    for name, shape in rank_params(work, layout, pp_rank):
        local = fsdp_shard_numel(tp_local_shape(name, shape, layout.tp), layout.dp_shard)
        elements += local
        grads += local
        if name.startswith("tok_embeddings") and layout.tp > 1 and layout.dp == 1:
            # The vocabulary-parallel embedding's gradient comes back replicated (the whole
            # table); FSDP, where there is data parallelism, reduces it into its shard.
            grads += math.prod(shape) - local
        tensors += 1
    return {"params": 4 * elements, "grads": 4 * grads,
            "optimizer": 8 * elements + STEP_BYTES * tensors}



def block_activation_bytes(work: Workload, layout: Layout, *, tokens: int) -> float:
    """Bytes autograd saves in one block for ``tokens`` = micro-batch x sequence tokens."""
    cfg, e, t = work.model, work.act_bytes, layout.tp
    h, a = cfg.d_model, cfg.n_heads
    t_sp = t if layout.sequence_parallel else 1
    k, f = cfg.kv_heads / a, cfg.hidden_dim / h
    per_token = h * (2 * (4 + e) / t_sp + 2 * e + e * (2 + 2 * k + 4 * f) / t)
    return tokens * (per_token + 4 * (2 / t_sp + a / t))


def head_activation_bytes(work: Workload, layout: Layout, *, tokens: int) -> float:
    """The last stage's final norm and head: as a block's norm, its full-sequence output, and
    the fp32 log-probabilities the loss keeps (vocabulary split over tp)."""
    e, t = work.act_bytes, layout.tp
    t_sp = t if layout.sequence_parallel else 1
    h = work.model.d_model
    return tokens * ((4 + e) * h / t_sp + 8 / t_sp + e * h + 4 * work.vocab / t)


def in_flight(layout: Layout, microbatches: int) -> float:
    """Microbatches whose activations the first pipeline rank (the most loaded) holds at
    its peak: all of them in GPipe; p in 1F1B; p (1 + (p-1)/(p v)) for the interleaved
    schedules (Narayanan et al. 2021), counted in units of this rank's layers; 1 without
    pipelining (gradient accumulation frees each microbatch's activations in its backward)."""
    p, v = layout.pp, layout.virtual
    if p == 1:
        return 1
    if layout.schedule == "gpipe":
        return microbatches
    if layout.schedule == "1f1b":
        return min(p, microbatches)
    return min(p * (1 + (p - 1) / (p * v)), microbatches)


def activation_bytes(work: Workload, layout: Layout) -> float:
    """Peak activation bytes on the first pipeline rank (the last one adds the head's)."""
    tokens = layout.micro_batch * work.seq_len
    layers = rank_layers(work, layout, 0)
    block = block_activation_bytes(work, layout, tokens=tokens)
    t_sp = layout.tp if layout.sequence_parallel else 1
    if layout.ac == "full":
        kept = layers * tokens * work.act_bytes * work.model.d_model / t_sp
        stored = kept * in_flight(layout, layout.microbatches(work)) + block
    else:
        checkpointed = (layers + layout.ac_every - 1) // layout.ac_every if layout.ac == "selective" else 0
        full = (layers - checkpointed) * block
        kept = checkpointed * tokens * work.act_bytes * work.model.d_model / t_sp
        stored = (full + kept) * in_flight(layout, layout.microbatches(work))
        stored += block if checkpointed else 0
    if layout.pp == 1:
        stored += head_activation_bytes(work, layout, tokens=tokens)
    return stored


def transient_bytes(work: Workload, layout: Layout) -> float:
    """FSDP's working buffers: two blocks' parameters gathered in the compute dtype (the one
    running and the one prefetched) and one block's unsharded fp32 gradients, when sharded."""
    if layout.dp_shard == 1:
        return 0.0
    return block_params(work) / layout.tp * (2 * work.act_bytes + 4)
