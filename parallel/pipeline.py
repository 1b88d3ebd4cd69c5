"""Pipeline parallelism with ``torch.distributed.pipelining``: stage split and schedules.

The model is split by layer index into ``pp * virtual`` stages; stage 0 also holds the
embedding and the last stage the final norm and head. Each part is a copy of the
single-device model with the other blocks removed, so parameter names stay those of the
whole model (``layers.5.attention.wq.weight``). Rank r of the pipeline holds stages
r, r + pp, r + 2 pp, ... (the loop order interleaved schedules expect).

Every stage needs the batch's attention mask and rotary positions, not only the first: a
stage that fell back to the model's default causal mask would silently train mlm, span or
ul2 (and document masking) on the wrong attention pattern. The schedules hand the keyword
arguments of ``step``/``eval`` to the forward of every stage on the calling rank (only
activations travel between ranks). They split each tensor in them along dim 0 with the
same function that splits the inputs and targets, and index the pieces by microbatch
number, so stage k's forward of microbatch i gets piece i in whatever order the schedule
runs forwards: GPipe, 1F1B, interleaved 1F1B and zero bubble (several stages per rank)
alike. Every pipeline rank builds the same batch (it also needs the labels), so each passes
the same keyword arguments. torch splits tensors but not an ``AttentionMask``, so the runner
passes the mask as its fields (``mask_kind`` is replicated, ``prefix_len`` and ``doc_ids``
are split) and a forward pre-hook on each stage module puts the mask back together. The
stage modules stay plain model copies: FSDP still finds the module it sharded, and
parameter names do not change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from triforge.kernels.attention import AttentionMask

from .context import ParallelContext

# Schedule names -> torch.distributed.pipelining.schedules classes, imported when a pipeline
# is built: that package pulls in torch._dynamo (about 0.7 s per process), which runs
# without a pipeline need not pay.
SCHEDULES = {
    "gpipe": "ScheduleGPipe",
    "1f1b": "Schedule1F1B",
    "interleaved_1f1b": "ScheduleInterleaved1F1B",
    "zero_bubble": "ScheduleInterleavedZeroBubble",
}
MULTI_STAGE = ("interleaved_1f1b", "zero_bubble")
MASK_FIELDS = ("mask_kind", "prefix_len", "doc_ids")


def stage_layers(n_layers: int, n_stages: int, layers_per_stage: list[int]) -> list[list[int]]:
    """Layer indices of each stage: ``layers_per_stage`` if given, else balanced by count."""
    if layers_per_stage:
        if (len(layers_per_stage) != n_stages or sum(layers_per_stage) != n_layers
                or min(layers_per_stage) < 1):
            raise ValueError(
                f"parallel.pp_layers_per_stage {list(layers_per_stage)} must have {n_stages} "
                f"entries, each >= 1, summing to n_layers({n_layers})"
            )
        bounds = np.cumsum([0, *layers_per_stage])
        return [list(range(bounds[i], bounds[i + 1])) for i in range(n_stages)]
    return [chunk.tolist() for chunk in np.array_split(np.arange(n_layers), n_stages)]


def split_model(model: nn.Module, layers: list[int], *, first: bool, last: bool) -> nn.Module:
    """A copy of (meta-device) ``model`` holding only ``layers`` and its end pieces."""
    part = copy.deepcopy(model)
    for key in list(part.layers.keys()):
        if int(key) not in layers:
            del part.layers[key]
    if not first:
        part.tok_embeddings = None
    if not last:
        part.norm = None
        part.output = None
    return part


def stage_kwargs(batch) -> dict:
    """The forward keyword arguments of every stage, in a form the schedules split into
    microbatches: the mask as its fields, and ``positions`` (b, s) or None."""
    mask = batch.mask
    return {"mask_kind": mask.kind, "prefix_len": mask.prefix_len, "doc_ids": mask.doc_ids,
            "positions": batch.positions}


def mask_from_fields(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of a stage module: one microbatch's mask fields -> ``mask=``."""
    if "mask_kind" not in kwargs:
        return None
    mask = AttentionMask(kwargs["mask_kind"], kwargs["prefix_len"], kwargs["doc_ids"])
    rest = {k: v for k, v in kwargs.items() if k not in MASK_FIELDS}
    return args, {**rest, "mask": mask}


def tied_embedding_group(ctx: ParallelContext):
    """The group of each pipeline's first and last stage ranks (Megatron's embedding group),
    which hold the two copies of a tied embedding. Every rank calls this at the same point
    (it creates groups); ranks outside both ends get a group they are not part of."""
    if ctx.dims.pp == 2:
        return ctx.meshes.pp.get_group()
    mine = None
    for ranks in ctx.dims.rank_groups()["pp"]:
        group = dist.new_group([ranks[0], ranks[-1]])
        if ctx.rank in (ranks[0], ranks[-1]):
            mine = group
    return mine


def sum_tied_gradients(weights: list[nn.Parameter], group) -> None:
    """Give both copies of a tied weight the sum of their gradients (in place). The copies
    are sharded alike (FSDP and TP both shard dim 0), so once each gradient has its
    parameter's placement (a vocab-parallel embedding's gradient comes back replicated)
    the local shards line up."""
    for w in weights:
        if isinstance(w.grad, DTensor) and w.grad.placements != w.placements:
            w.grad = w.grad.redistribute(w.device_mesh, w.placements)
        grad = w.grad.to_local() if isinstance(w.grad, DTensor) else w.grad
        dist.all_reduce(grad, group=group)


def build_schedule(parts: list[nn.Module], stage_ids: list[int], n_stages: int,
                   pp_group, device: torch.device, *, schedule: str, microbatches: int,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """The ``schedule`` over this rank's stage modules ``parts`` (stage ids ``stage_ids`` of
    ``n_stages``), communicating over ``pp_group``, with ``microbatches`` per step.

    ``loss_fn(output, labels)`` runs on the last stage per microbatch; its result is
    backpropagated as is (``scale_grads=False``): the caller normalizes the loss.
    """
    from torch.distributed.pipelining import PipelineStage

    for part in parts:
        part.register_forward_pre_hook(mask_from_fields, with_kwargs=True)
    stages = [PipelineStage(part, sid, n_stages, device, group=pp_group)
              for part, sid in zip(parts, stage_ids, strict=True)]
    cls = schedule_class(schedule)
    return cls(stages if schedule in MULTI_STAGE else stages[0], n_microbatches=microbatches,
               loss_fn=loss_fn, scale_grads=False)


def schedule_class(name: str) -> type:
    """The ``torch.distributed.pipelining`` schedule class of ``parallel.pp_schedule``."""
    from torch.distributed.pipelining import schedules

    return getattr(schedules, SCHEDULES[name])
