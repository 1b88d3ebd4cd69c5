"""Bytes each rank moves per optimizer step, per mesh dimension, and the link they cross.

Volumes are what a ring algorithm moves per rank (all-reduce 2(n-1)/n of the buffer,
all-gather and reduce-scatter (n-1)/n of the full buffer, point-to-point the tensor), the
convention ``bench/comm.py`` measures with:

- dp_shard (FSDP2): every block's parameters gathered in the compute dtype in forward and
  again in backward (once if ``reshard_after_forward`` is off) per microbatch; the root's
  (embedding, final norm, head) once per microbatch, as it keeps them through backward;
  gradients reduce-scattered in fp32 once per step (accumulation skips the others);
- dp_replicate: the fp32 gradient shard all-reduced once per step (DDP, or HSDP's
  replicas);
- tp: per microbatch, four activation all-reduces per block (attention and MLP, forward
  and backward; under sequence parallelism an all-gather plus a reduce-scatter, the same
  bytes), two more per recomputed block, one for the vocabulary-parallel embedding's sum
  and one for the head's input gradient (as in Megatron);
- pp: per microbatch and stage boundary, the activation forward and its gradient back.
"""

from __future__ import annotations

import math

from .layout import Layout, Workload
from .memory import rank_layers, rank_params, rank_stages, tp_local_shape

ROOT = ("tok_embeddings", "norm", "output")


def _rank_elements(work: Workload, layout: Layout, pp_rank: int) -> tuple[int, int]:
    """(block, root) parameter elements of one tensor-parallel rank of ``pp_rank``."""
    block = root = 0
    for name, shape in rank_params(work, layout, pp_rank):
        n = math.prod(tp_local_shape(name, shape, layout.tp))
        if name.split(".")[0] in ROOT:
            root += n
        else:
            block += n
    return block, root


def _recomputed_layers(layout: Layout, layers: int) -> int:
    if layout.ac == "full":
        return layers
    if layout.ac == "selective":
        return (layers + layout.ac_every - 1) // layout.ac_every
    return 0


def _pp_transfers(layout: Layout, pp_rank: int) -> int:
    """Tensors a pipeline rank sends or receives per microbatch, over all its stages."""
    n_stages = layout.pp * layout.virtual
    return sum(2 * ((sid < n_stages - 1) + (sid > 0)) for sid in rank_stages(layout, pp_rank))


def comm_bytes(work: Workload, layout: Layout, pp_rank: int = 0) -> dict[str, float]:
    """Bytes per step moved by a rank of pipeline rank ``pp_rank``, by mesh dimension."""
    m = layout.microbatches(work)
    e = work.act_bytes
    block, root = _rank_elements(work, layout, pp_rank)
    out = {}
    n = layout.dp_shard
    if n > 1:
        gathers = (2 if layout.reshard_after_forward else 1) * m * block + m * root
        out["dp_shard"] = (n - 1) / n * (e * gathers + 4 * (block + root))
    r = layout.dp_replicate
    if r > 1:
        out["dp_replicate"] = 2 * (r - 1) / r * 4 * -(-(block + root) // n)
    t = layout.tp
    if t > 1:
        stages = rank_stages(layout, pp_rank)
        layers = rank_layers(work, layout, pp_rank)
        ends = (0 in stages) + (layout.pp * layout.virtual - 1 in stages)
        reductions = 4 * layers + 2 * _recomputed_layers(layout, layers) + ends
        tokens = layout.micro_batch * work.seq_len
        out["tp"] = m * reductions * 2 * (t - 1) / t * e * tokens * work.model.d_model
    if layout.pp > 1:
        tokens = layout.micro_batch * work.seq_len
        out["pp"] = m * _pp_transfers(layout, pp_rank) * e * tokens * work.model.d_model
    return out


def group_span(layout: Layout, dim: str) -> int:
    """Consecutive ranks one group of mesh dimension ``dim`` spans (mesh order pp,
    dp_replicate, dp_shard, tp: tp innermost)."""
    stride = {"tp": 1, "dp_shard": layout.tp, "dp_replicate": layout.tp * layout.dp_shard,
              "pp": layout.tp * layout.dp}[dim]
    size = {"tp": layout.tp, "dp_shard": layout.dp_shard, "dp_replicate": layout.dp_replicate,
            "pp": layout.pp}[dim]
    return stride * size


def comm_seconds(bytes_by_dim: dict[str, float], layout: Layout, device,
                 gpus_per_node: int) -> dict[str, float]:
    """Time of each dimension's traffic at NVLink speed inside a node, at the network's
    across nodes; point-to-point traffic runs both directions at once."""
    times = {}
    for dim, moved in bytes_by_dim.items():
        inside = group_span(layout, dim) <= gpus_per_node
        bw = device.intra_bw if inside else device.inter_bw
        times[dim] = moved / bw / (2 if dim == "pp" else 1)
    return times
