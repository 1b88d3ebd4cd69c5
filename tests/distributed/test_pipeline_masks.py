"""Every pipeline schedule runs each stage with its microbatch's mask and positions.

Two ranks run ``PipelineRunner`` over a model split into pipeline stages, on one batch whose
rows differ in prefix length, document ids and positions; the training loss, every gradient
and the evaluation loss must equal the whole model's on the same batch. A stage that used
the model's default causal mask, or another microbatch's mask, would change all three.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.helpers.spawn import spawn_ranks
from triforge.kernels.attention import AttentionMask
from triforge.models import ModelConfig, build_model, materialize
from triforge.parallel import ParallelConfig, ParallelDims
from triforge.parallel.context import ParallelContext
from triforge.parallel.mesh import build_meshes
from triforge.parallel.pipeline import MULTI_STAGE, split_model, stage_layers
from triforge.trainer.objectives import IGNORE_INDEX, Batch
from triforge.trainer.objectives import summed_cross_entropy as loss_sum
from triforge.trainer.pipeline_runner import PipelineRunner

# init_std 0.2: at the usual 0.02 the logits barely depend on attention, so a wrong mask
# would change the loss by less than the tolerance would notice
CFG = ModelConfig(name="t", d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=16,
                  init_std=0.2)
VOCAB, BATCH, SEQ, MICROBATCHES = 64, 8, 16, 4


def masked_batch() -> Batch:
    """Rows with their own prefix length, two or three documents each and random positions
    (RoPE is relative: positions that restart per document would change nothing within
    document-masked attention, so they would not show whether positions arrive)."""
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    labels[:, :3] = IGNORE_INDEX
    prefix_len = torch.randint(1, SEQ, (BATCH,), generator=gen)
    doc_ids = (torch.arange(SEQ) >= torch.randint(4, SEQ, (BATCH, 1), generator=gen)).long()
    doc_ids[: BATCH // 2, SEQ - 3:] = 2  # a third document in the first half of the rows
    mask = AttentionMask("prefix", prefix_len=prefix_len, doc_ids=doc_ids)
    return Batch(inputs, labels, mask, torch.randint(0, SEQ, (BATCH, SEQ), generator=gen))


def reference_model():
    return materialize(build_model(CFG, vocab_size=VOCAB, attention_backend="sdpa"), "cpu",
                       seed=0)


def check_schedule(rank: int, world: int, schedule: str) -> None:
    dims = ParallelDims.from_config(ParallelConfig(pp=world), world)
    ctx = ParallelContext(dims, build_meshes(dims, "cpu"), rank)
    ref, batch = reference_model(), masked_batch()
    virtual = 2 if schedule in MULTI_STAGE else 1
    n_stages = world * virtual
    layers = stage_layers(CFG.n_layers, n_stages, [])
    stage_ids = [rank + k * world for k in range(virtual)]
    parts = [split_model(ref, layers[s], first=s == 0, last=s == n_stages - 1)
             for s in stage_ids]  # copies of the reference weights
    runner = PipelineRunner(parts, stage_ids, n_stages, ctx, torch.device("cpu"),
                            schedule=schedule, microbatches=MICROBATCHES)
    objective = SimpleNamespace(loss=loss_sum)
    loss, _ = runner.forward_backward(objective, batch, device=torch.device("cpu"), ctx=ctx)
    eval_sum = runner.loss_sum(objective, batch, ctx)

    ref_sum = loss_sum(ref(batch.inputs, mask=batch.mask, positions=batch.positions),
                       batch.labels)
    (ref_sum / batch.num_targets).backward()
    torch.testing.assert_close(loss, ref_sum.detach() / batch.num_targets, rtol=1e-5,
                               atol=0)
    torch.testing.assert_close(eval_sum, ref_sum.detach(), rtol=1e-5, atol=0)
    grads = dict(ref.named_parameters())
    for part in parts:
        for name, p in part.named_parameters():
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-7,
                                       msg=lambda m, n=name: f"{schedule} {n}: {m}")


@pytest.mark.distributed
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "interleaved_1f1b", "zero_bubble"])
def test_every_stage_gets_its_microbatch_mask(schedule):
    spawn_ranks(check_schedule, 2, schedule)


def test_the_batch_needs_its_mask_and_positions():
    """The check above can fail: dropping any part of the batch's mask spec, or its
    positions, moves the loss by far more than its tolerance (1e-5)."""
    ref, batch = reference_model(), masked_batch()
    mask = batch.mask
    variants = {
        "default causal mask": {"positions": batch.positions},
        "no document ids": {"mask": AttentionMask("prefix", prefix_len=mask.prefix_len),
                            "positions": batch.positions},
        "default positions": {"mask": mask},
    }
    with torch.no_grad():
        full = loss_sum(ref(batch.inputs, mask=mask, positions=batch.positions), batch.labels)
        for name, kwargs in variants.items():
            other = loss_sum(ref(batch.inputs, **kwargs), batch.labels)
            assert abs(other - full) > 1e-4 * full, f"{name} leaves the loss unchanged"
