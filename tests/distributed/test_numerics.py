"""Mixed precision and the non-finite policy across ranks (2 processes, gloo).

A problem seen by one rank must change what every rank does: the verdict is agreed by an
all-reduce, so a NaN or fp16 overflow injected on rank 1 alone skips (or halts) the step on
rank 0 too, which writes the metrics and the checkpoints these tests read.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.helpers.bounded import run_bounded
from tests.helpers.runs import COMMON, run_layout
from tests.helpers.state import UNIT_ROUNDOFF, flat

FSDP2 = ["parallel.dp_shard=2"]
EVERY_STEP = ["checkpoint.every=1", "checkpoint.keep=0"]
ON_RANK_1_AT_3 = ["debug.inject_nonfinite_at_step=3", "debug.inject_nonfinite_rank=1"]


def common(*drop: str) -> list[str]:
    return [a for a in COMMON if not a.startswith(drop)] if drop else COMMON


def tensors(run_dir: Path, step: int) -> dict:
    """Every tensor of a checkpoint (model and optimizer state), gathered into one file."""
    out = run_dir / f"step_{step}.pt"
    dcp_to_torch_save(run_dir / "checkpoints" / f"step_{step}" / "tensors", out)
    return torch.load(out, weights_only=True)


ENGINES = {
    "fsdp2": FSDP2,
    # DeepSpeed's own fp16 (its loss scaler and overflow check) on a CPU it would refuse
    "deepspeed_zero2": ["parallel.engine=deepspeed", "parallel.zero_stage=2",
                        "debug.deepspeed_cpu_fp16=true"],
}
FP16_OVERFLOW = [*EVERY_STEP, *ON_RANK_1_AT_3, "precision=fp16", "precision.hysteresis=1",
                 "trainer.max_steps=4", "debug.inject_nonfinite_into=overflow"]


@pytest.fixture(scope="module")
def fp16_overflow(tmp_path_factory, data_overrides):
    """engine -> (run dir, records) of an fp16 run whose step 3 overflows on rank 1 alone
    (a real overflow: the loss times 2**40), each run once per module."""
    runs: dict[str, tuple[Path, list[dict]]] = {}

    def run(engine: str) -> tuple[Path, list[dict]]:
        if engine not in runs:
            if engine != "fsdp2":
                pytest.importorskip("deepspeed")
            run_dir = tmp_path_factory.mktemp(engine)
            records = run_layout(run_dir, 2, [*ENGINES[engine], *FP16_OVERFLOW],
                                 data_overrides, common("checkpoint.", "trainer.max_steps"))
            runs[engine] = run_dir, records
        return runs[engine]

    return run


@pytest.mark.distributed
@pytest.mark.parametrize("engine", list(ENGINES))
def test_fp16_overflow_on_one_rank_skips_everywhere(engine, fp16_overflow):
    """The step is skipped and counted, the scale backs off, and the weights and optimizer
    state stay as they were, bit for bit: under FSDP2 with our scaler, and under DeepSpeed
    with its own."""
    run_dir, records = fp16_overflow(engine)
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1]
    assert [r["loss_scale"] for r in records] == [65536.0, 65536.0, 32768.0, 32768.0]
    before, skipped, after = (flat(tensors(run_dir, s)) for s in (2, 3, 4))
    assert before.keys() == skipped.keys()
    for key, value in before.items():  # weights and optimizer state, bit for bit
        if key.endswith(".lr."):  # the schedule sets the learning rate before every step
            continue
        same = torch.equal(value, skipped[key]) if torch.is_tensor(value) else value == skipped[key]
        assert same, key
    weights = [k for k in before if ".model." in f".{k}" and torch.is_tensor(before[k])]
    assert weights and any(not torch.equal(before[k], after[k]) for k in weights)


@pytest.mark.distributed
def test_deepspeed_fp16_trains_like_fsdp2_fp16(fp16_overflow):
    """Around the same overflow, DeepSpeed's fp16 (fp16 weights, fp32 master copies,
    gradients reduced in fp32) tracks FSDP2's: losses and gradient norms within 4 fp16 unit
    roundoffs (the tracking bound of tests/integration/test_precision.py)."""
    _, ours = fp16_overflow("fsdp2")
    _, theirs = fp16_overflow("deepspeed_zero2")
    for key in ("loss", "grad_norm"):
        pairs = [(a[key], b[key]) for a, b in zip(theirs, ours, strict=True) if a["step"] != 3]
        gap = max(abs(a - b) / abs(b) for a, b in pairs)
        assert gap < 4 * UNIT_ROUNDOFF["fp16"], (key, gap)


@pytest.mark.distributed
@pytest.mark.parametrize("engine", ["fsdp2", "deepspeed_zero3"])
def test_nan_loss_on_one_rank_is_skipped_by_all(engine, tmp_path, data_overrides):
    """Under DeepSpeed (fp32 here) the skip goes through its own overflow path, which drops
    the non-finite gradients without an update."""
    layout = FSDP2
    if engine != "fsdp2":
        pytest.importorskip("deepspeed")
        layout = ["parallel.engine=deepspeed", "parallel.zero_stage=3"]
    records = run_layout(tmp_path / "skip", 2, [*layout, *ON_RANK_1_AT_3, "trainer.max_steps=5",
                                                "trainer.nonfinite=skip"],
                         data_overrides, common("trainer.max_steps"))
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 1, 1]
    assert all(r["loss"] == r["loss"] for r in records if r["step"] != 3)  # finite elsewhere


@pytest.mark.distributed
def test_nan_loss_on_one_rank_halts_every_rank(tmp_path, data_overrides):
    args = [*common("trainer.max_steps"), *data_overrides, f"run.dir={tmp_path / 'halt'}",
            "parallel.tp=2", *ON_RANK_1_AT_3, "trainer.max_steps=5"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "triforge.launcher.train", *args]
    proc = run_bounded(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    message = "error: non-finite loss at step 3 (first seen on rank 1)"
    assert proc.stderr.count(message) == 2, proc.stderr[-3000:]  # both ranks stop, same words


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_bf16_tracks_single_process_fp32(tmp_path, data_overrides):
    reference = run_layout(tmp_path / "fp32", 1, [], data_overrides)
    mixed = run_layout(tmp_path / "bf16", 2, [*FSDP2, "precision=bf16"], data_overrides)
    gaps = [abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(mixed, reference, strict=True)]
    assert 0 < max(gaps) < 4 * UNIT_ROUNDOFF["bf16"], max(gaps)
