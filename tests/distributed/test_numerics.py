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


@pytest.mark.distributed
def test_fp16_overflow_on_one_rank_skips_everywhere(tmp_path, data_overrides):
    run_dir = tmp_path / "fp16"
    records = run_layout(run_dir, 2, [*FSDP2, *EVERY_STEP, *ON_RANK_1_AT_3, "precision=fp16",
                                      "precision.hysteresis=1", "trainer.max_steps=4",
                                      "debug.inject_nonfinite_into=grad"],
                         data_overrides, common("checkpoint.", "trainer.max_steps"))
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
def test_nan_loss_on_one_rank_is_skipped_by_all(tmp_path, data_overrides):
    records = run_layout(tmp_path / "skip", 2, [*FSDP2, *ON_RANK_1_AT_3, "trainer.max_steps=5",
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
