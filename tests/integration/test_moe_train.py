"""Mixture-of-experts models train end to end: the loss falls, the balance metrics reach
metrics.jsonl, the expert bias moves and is checkpointed, and a resume is bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triforge.launcher.config import load_config
from triforge.launcher.train import train

BASE = ["model=moe_tiny", "logging.wandb.enabled=false", "logging.progress_bar=false",
        "trainer.batch_size=4", "trainer.seq_len=64", "trainer.eval_every=0",
        "trainer.sample_at_end=false", "optim.warmup_steps=2", "trainer.log_every=1",
        "optim.lr=3e-3", "model.moe.router.z_loss_coeff=1e-3",
        "model.moe.router.bias_update_rate=1e-2"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run(run_dir: Path, data_overrides, *extra: str):
    job = load_config([*BASE, *data_overrides, f"run.dir={run_dir}", *extra])
    return train(job, log=lambda *_: None)


def test_moe_model_learns_and_reports_its_balance(tmp_path, data_overrides):
    trainer = run(tmp_path / "run", data_overrides, "trainer.max_steps=30")
    rows = records(tmp_path / "run")
    assert sum(r["loss"] for r in rows[-5:]) < 0.8 * sum(r["loss"] for r in rows[:5])
    last = rows[-1]
    for layer in (0, 1):
        p = f"moe_{layer}_"
        # 4 x 64 tokens, top-2: each assignment of the step counted once
        counts, _ = trainer.parts[0].layers[str(layer)].feed_forward.step_statistics(1)
        assert counts.sum() == 4 * 64 * 2
        assert last[p + "tokens_min"] == counts.min() and last[p + "tokens_max"] == counts.max()
        assert last[p + "dropped"] == 0.0  # dropless
        assert 0.5 < last[p + "balance_loss"] < 4  # 1 when balanced, E=4 when collapsed
        assert last[p + "z_loss"] > 0 and last[p + "tokens_cv"] >= 0
        assert last[p + "bias_norm"] > 0  # auxiliary-loss-free balancing moved the bias


@pytest.mark.parametrize("router", ["token_choice", "expert_choice"])
def test_moe_resume_is_bit_exact(tmp_path, data_overrides, router):
    extra = ["trainer.max_steps=8", "checkpoint.every=4", f"model.moe.router.kind={router}",
             "model.moe.router.capacity_factor=1.25"]
    if router == "expert_choice":
        extra.append("model.moe.router.bias_update_rate=0")
    run(tmp_path / "straight", data_overrides, *extra)
    run(tmp_path / "resumed", data_overrides, *extra, "trainer.stop_at_step=4")
    run(tmp_path / "resumed", data_overrides, *extra)
    straight, resumed = records(tmp_path / "straight"), records(tmp_path / "resumed")
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed]  # bit for bit
    assert straight[-1]["moe_0_bias_norm"] == resumed[-1]["moe_0_bias_norm"]
