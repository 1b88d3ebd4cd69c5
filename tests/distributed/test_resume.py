"""Checkpoints written by several ranks resume exactly in the same layout."""

from __future__ import annotations

import json

import pytest

from tests.helpers.runs import COMMON, SAVE_AT, STEPS, run_layout

LAYOUTS = {
    "fsdp2": (2, ["parallel.dp_shard=2"]),
    "fsdp2_async_save": (2, ["parallel.dp_shard=2", "checkpoint.async_save=true"]),
    # decisions are a function of (seed, step, layer): the resumed run draws the same ones
    "fsdp2_layer_drop": (2, ["parallel.dp_shard=2", "layer_drop.enabled=true",
                             "layer_drop.theta=0.3", "layer_drop.gamma=0.5"]),
    "dp2_tp2": (4, ["parallel.dp_replicate=2", "parallel.dp_shard=1", "parallel.tp=2"]),
    "pp2_tp1": (2, ["parallel.pp=2", "parallel.pp_schedule=interleaved_1f1b",
                    "parallel.pp_virtual_stages=2"]),
    # DeepSpeed's partitions written as whole tensors in our format, and written back;
    # under fp16 with its own loss scaler, whose growth (due at step 4: an overflow at
    # step 1, then growth_interval + 1 clean steps) the resumed run must time the same
    "deepspeed_zero2_fp16": (2, ["parallel.engine=deepspeed", "parallel.zero_stage=2",
                                 "precision=fp16", "debug.deepspeed_cpu_fp16=true",
                                 "precision.growth_interval=2",
                                 "debug.inject_nonfinite_at_step=1",
                                 "debug.inject_nonfinite_into=overflow"]),
    "deepspeed_zero3": (2, ["parallel.engine=deepspeed", "parallel.zero_stage=3"]),
    # context parallelism: FSDP shards over the cp ranks; both read the same samples
    "cp2_ul2": (2, ["parallel.cp=2", "objective=ul2", "data.document_masking=true"]),
}


def losses(run_dir) -> dict[int, tuple]:
    """Each step's loss, with the loss scale and skipped-step count of fp16 runs."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: (r["loss"], r.get("loss_scale"), r["skipped_steps"])
            for r in map(json.loads, lines)}


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_resume_in_same_layout_is_bit_exact(name, tmp_path, data_overrides):
    nproc, overrides = LAYOUTS[name]
    common = [a for a in COMMON if not a.startswith("checkpoint.")] + [f"checkpoint.every={SAVE_AT}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_layout(straight, nproc, overrides, data_overrides, common)
    run_layout(split, nproc, [*overrides, f"trainer.stop_at_step={SAVE_AT}"], data_overrides, common)
    assert sorted(losses(split)) == list(range(1, SAVE_AT + 1))
    assert (split / "checkpoints" / "latest").read_text().strip() == f"step_{SAVE_AT}"
    ranks = sorted(p.name for p in (split / "checkpoints" / f"step_{SAVE_AT}" / "ranks").iterdir())
    assert ranks == [f"rank_{r}.json" for r in range(nproc)]  # each rank's RNG streams
    run_layout(split, nproc, overrides, data_overrides, common)  # the same command resumes
    a, b = losses(straight), losses(split)
    after = range(SAVE_AT + 1, STEPS + 1)
    assert [a[s] for s in after] == [b[s] for s in after]
