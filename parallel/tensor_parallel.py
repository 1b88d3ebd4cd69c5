"""Tensor + sequence parallelism as DTensor plans (Megatron-style, via parallelize_module).

Attention and MLP: column-wise q/k/v and w1/w3, row-wise wo and w2, so each block needs one
all-reduce forward and one backward (or, with sequence parallelism, an all-gather and a
reduce-scatter that keep activations outside attention/MLP sharded along the sequence).
The embedding is vocab-parallel and the head column-wise with its output kept sharded over
the vocabulary, so the loss is computed without gathering full-vocabulary logits.

Mixture-of-experts blocks: the layer takes the whole micro-batch on every tp rank (gathered
along the sequence under sequence parallelism) and routes it alike everywhere, with the
router replicated; its output leaves as the residual layout again. The shared experts are
tensor-parallel like a dense feed-forward. The routed experts are not split here: expert
parallelism takes the tp ranks into its expert group, and each tp rank sends only its share
of the routed rows (parallel/expert_parallel.py). Routing on the whole micro-batch costs one
router matmul per tp rank, and keeps every router, capacity and balance scope exactly what
it is in one process.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from triforge.models.feed_forward import FeedForward
from triforge.models.moe.layer import MoEFeedForward


def _replicate_params(module: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Make ``module``'s parameters replicated DTensors while its inputs and outputs stay
    plain tensors. Used for the norms when sequence parallelism is off, so that every
    parameter of a tensor-parallel model is a DTensor (optimizer and gradient clipping then
    see one kind of tensor)."""

    def to_replicate(_mod, inputs, mesh):
        return tuple(DTensor.from_local(x, mesh, [Replicate()], run_check=False) for x in inputs)

    def to_local(_mod, output, _mesh):
        return output.to_local()

    distribute_module(module, tp_mesh, input_fn=to_replicate, output_fn=to_local)


class Replicated(ParallelStyle):
    """A plan entry for a module computed alike on every tp rank on plain tensors:
    parameters replicated (see ``_replicate_params``)."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        _replicate_params(module, device_mesh)
        return module


class EmbeddingParallel(RowwiseParallel):
    """The vocabulary-parallel embedding: ``RowwiseParallel`` whose output leaves through a
    blocking collective. torch's style reduces asynchronously and hands the first block an
    ``AsyncCollectiveTensor``; a block compiled by ``trainer.compile`` then sends a plain
    tensor back as that input's gradient, which DTensor's redistribution cannot take
    (AttributeError: no ``_local_tensor``, torch 2.13). The first block needs the reduced
    embedding at once anyway, so nothing overlaps either way."""

    @staticmethod
    def _prepare_output_fn(output_layouts, use_local_output, mod, outputs, device_mesh):
        if outputs.placements != output_layouts:
            outputs = outputs.redistribute(placements=output_layouts, async_op=False)
        return outputs.to_local() if use_local_output else outputs


def _swiglu_plan(ffn: nn.Module, residual, prefix: str = "feed_forward") -> dict:
    del ffn
    return {
        prefix: PrepareModuleInput(input_layouts=(residual,),
                                   desired_input_layouts=(Replicate(),)),
        f"{prefix}.w1": ColwiseParallel(),
        f"{prefix}.w3": ColwiseParallel(),
        f"{prefix}.w2": RowwiseParallel(output_layouts=residual),
    }


def _moe_plan(ffn: nn.Module, residual) -> dict:
    # In: the whole micro-batch as a plain tensor (an all-gather along the sequence under
    # sequence parallelism). Out: that rank's part of the residual again (a local slice).
    plan = {
        "feed_forward": PrepareModuleInputOutput(
            input_layouts=(residual,), desired_input_layouts=(Replicate(),),
            use_local_input=True, output_layouts=(Replicate(),),
            desired_output_layouts=(residual,), use_local_output=True),
        "feed_forward.router.gate": Replicated(),
    }
    if ffn.shared is not None:
        plan.update(_swiglu_plan(ffn.shared, Replicate(), prefix="feed_forward.shared"))
    return plan


# One plan per feed-forward type: a block's plan is its attention's plus its feed-forward's.
FEED_FORWARD_PLANS = {FeedForward: _swiglu_plan, MoEFeedForward: _moe_plan}


def _block_plan(block: nn.Module, *, sequence_parallel: bool) -> dict:
    # Between blocks activations are (b, s, d): Shard(1) = sharded along the sequence.
    # Attention and feed-forward take the activation as their only positional argument
    # (rotary tables, mask and positions are keywords), so the input plans key on it alone.
    residual = Shard(1) if sequence_parallel else Replicate()
    ffn_plan = FEED_FORWARD_PLANS.get(type(block.feed_forward))
    if ffn_plan is None:
        raise ValueError(f"no tensor-parallel plan for feed-forward "
                         f"{type(block.feed_forward).__name__} (layer {block.layer_id})")
    plan = {
        "attention": PrepareModuleInput(input_layouts=(residual,),
                                        desired_input_layouts=(Replicate(),)),
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=residual),
        **ffn_plan(block.feed_forward, residual),
    }
    if sequence_parallel:
        plan["attention_norm"] = SequenceParallel()
        plan["ffn_norm"] = SequenceParallel()
    return plan


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, *, sequence_parallel: bool) -> None:
    """Shard ``model`` (a Transformer or a pipeline stage of one) over ``tp_mesh`` in place.

    Afterwards ``model(...)`` returns logits as a DTensor sharded over the vocabulary
    (``Shard(-1)``); compute the loss under ``torch.distributed.tensor.parallel.loss_parallel``.
    """
    residual = Shard(1) if sequence_parallel else Replicate()
    top: dict = {}
    if model.tok_embeddings is not None:
        top["tok_embeddings"] = EmbeddingParallel(input_layouts=Replicate(),
                                                  output_layouts=residual)
    if model.norm is not None and sequence_parallel:
        top["norm"] = SequenceParallel()
    if model.output is not None:
        top["output"] = ColwiseParallel(
            input_layouts=residual, output_layouts=Shard(-1), use_local_output=False
        )
    parallelize_module(model, tp_mesh, top)
    # Both uses of a tied embedding are sharded Shard(0), over the vocabulary: the head's
    # rows are the embedding's rows, so one DTensor serves both after re-tying.
    model.tie_weights()
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, _block_plan(block, sequence_parallel=sequence_parallel))
        if not sequence_parallel:
            _replicate_params(block.attention_norm, tp_mesh)
            _replicate_params(block.ffn_norm, tp_mesh)
    if model.norm is not None and not sequence_parallel:
        _replicate_params(model.norm, tp_mesh)
