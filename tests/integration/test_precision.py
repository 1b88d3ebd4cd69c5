"""Mixed precision and the non-finite policy, end to end in one process.

Tracking bound: the per-step loss of a bf16/fp16 run stays within 4 unit roundoffs of the
compute dtype (relative) of the fp32 run: bf16 u = 2^-8, fp16 u = 2^-11. Each logit carries
about one rounding of the compute dtype; the mean over b*s tokens of the cross entropy
averages those errors, so a correct policy sits well inside a few u over 50 steps, while
fp16 underflow without loss scaling, or bf16 master weights, drift past it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.state import UNIT_ROUNDOFF
from triforge.launcher.build import build_trainer
from triforge.launcher.config import load_config
from triforge.launcher.env import ProcessEnv
from triforge.parallel.context import ParallelContext

BASE = ["model=tiny", "logging.wandb.enabled=false", "logging.progress_bar=false",
        "trainer.batch_size=4", "trainer.seq_len=64", "trainer.eval_every=0",
        "trainer.sample_at_end=false", "optim.warmup_steps=2", "trainer.log_every=1",
        "checkpoint.every=0", "checkpoint.save_at_end=false"]


def build(tmp_path: Path, data_overrides, *extra: str):
    job = load_config([*BASE, *data_overrides, f"run.dir={tmp_path / 'run'}", *extra])
    trainer, _ = build_trainer(job, ProcessEnv(), ParallelContext.single(), torch.device("cpu"),
                               log=lambda *_: None)
    return trainer


def step_losses(trainer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        trainer.train_step()
        out.append(trainer._losses[-1])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_tracks_fp32(tmp_path, data_overrides, dtype):
    reference = step_losses(build(tmp_path / "fp32", data_overrides), 50)
    trainer = build(tmp_path / dtype, data_overrides, f"precision={dtype}")
    mixed = step_losses(trainer, 50)
    gaps = [abs(a - b) / b for a, b in zip(mixed, reference, strict=True)]
    assert max(gaps) < 4 * UNIT_ROUNDOFF[dtype], max(gaps)
    assert max(gaps) > 0  # the run did compute in low precision
    assert trainer.state.skipped_steps == 0 and reference[-1] < reference[0] - 1.0


def snapshot(trainer) -> dict:
    model = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # Optimizer state, not param_groups: the learning rate is set before every step.
    state = trainer.engine.optimizer.optimizers[0].state_dict()["state"]
    return {"model": model, "optim": copy.deepcopy(state)}


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("overrides,scale_after", [
    (["precision=fp16", "precision.hysteresis=1", "debug.inject_nonfinite_into=grad"], 32768.0),
    (["precision=bf16", "trainer.nonfinite=skip", "debug.inject_nonfinite_into=loss"], 1.0),
])
def test_skipped_step_leaves_weights_and_optimizer_untouched(tmp_path, data_overrides,
                                                             overrides, scale_after):
    trainer = build(tmp_path, data_overrides, *overrides, "debug.inject_nonfinite_at_step=3")
    step_losses(trainer, 2)
    before = snapshot(trainer)
    trainer.train_step()
    assert trainer.state.step == 3 and trainer.state.skipped_steps == 1
    assert trainer.scaler.scale == scale_after
    assert_same(before, snapshot(trainer))
    trainer.train_step()  # the next step applies again
    assert trainer.state.skipped_steps == 1
    after = snapshot(trainer)["model"]
    assert any(not torch.equal(before["model"][k], after[k]) for k in after)


def test_halt_names_step_rank_and_what_was_nonfinite(tmp_path, data_overrides):
    cmd = [sys.executable, "-m", "triforge.launcher.train", *BASE, *data_overrides,
           f"run.dir={tmp_path / 'halt'}", "trainer.max_steps=5", "precision=bf16",
           "debug.inject_nonfinite_at_step=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert ("error: non-finite loss at step 2 (first seen on rank 0); set "
            "trainer.nonfinite=skip") in proc.stderr
    steps = [json.loads(x)["step"] for x in (tmp_path / "halt" / "metrics.jsonl").open()]
    assert steps == [1]


def test_fp16_scaler_state_resumes_exactly(tmp_path, data_overrides):
    """An overflow at step 2 backs the scale off; the checkpoint carries it, so a resumed run
    continues with the same scale and the same losses as an uninterrupted one."""
    from triforge.launcher.train import train

    common = [*BASE, *data_overrides, "trainer.max_steps=6", "precision=fp16",
              "precision.hysteresis=1", "precision.initial_scale=1024",
              "debug.inject_nonfinite_at_step=2", "debug.inject_nonfinite_into=grad",
              "checkpoint.every=3", "checkpoint.save_at_end=true"]

    def records(name: str, *extra: str) -> list[dict]:
        train(load_config([*common, f"run.dir={tmp_path / name}", *extra]), log=lambda *_: None)
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").open()]

    straight = records("straight")
    records("split", "trainer.stop_at_step=3")
    split = records("split")
    assert [r["loss_scale"] for r in straight] == [1024, 512, 512, 512, 512, 512]
    assert [r["skipped_steps"] for r in straight] == [0, 1, 1, 1, 1, 1]
    pick = [(r["step"], r["loss"], r["loss_scale"], r["skipped_steps"]) for r in split]
    assert pick[3:] == [(r["step"], r["loss"], r["loss_scale"], r["skipped_steps"])
                        for r in straight[3:]]
