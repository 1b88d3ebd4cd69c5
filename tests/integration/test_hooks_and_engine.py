"""The trainer's seams: step hooks fire at their points, and the step goes through the
data-parallel engine (a recording engine around FSDP2Engine sees every phase in order)."""

from __future__ import annotations

import json

import torch

from triforge.launcher.build import build_trainer
from triforge.launcher.config import load_config
from triforge.launcher.env import ProcessEnv
from triforge.parallel.context import ParallelContext
from triforge.trainer.engine import DataParallelEngine

BASE = ["model=tiny", "logging.wandb.enabled=false", "logging.progress_bar=false",
        "trainer.batch_size=4", "trainer.seq_len=32", "trainer.eval_every=0",
        "trainer.sample_at_end=false", "trainer.log_every=2", "checkpoint.every=0",
        "checkpoint.save_at_end=false", "trainer.max_steps=4"]


def build(tmp_path, data_overrides, *extra):
    job = load_config([*BASE, *data_overrides, f"run.dir={tmp_path}", *extra])
    trainer, _ = build_trainer(job, ProcessEnv(), ParallelContext.single(), torch.device("cpu"),
                               log=lambda *_: None)
    return trainer


def test_hooks_fire_in_order_and_can_add_metrics(tmp_path, data_overrides):
    trainer = build(tmp_path, data_overrides)
    calls = []
    for point in ("step_start", "before_optimizer_step", "after_optimizer_step"):
        getattr(trainer.hooks, point).append(lambda step, p=point: calls.append((p, step)))
    trainer.hooks.at_log.append(lambda step, metrics: metrics.update(hook_step=step))
    trainer.fit()
    expected = [(p, s) for s in range(1, 5)
                for p in ("step_start", "before_optimizer_step", "after_optimizer_step")]
    assert calls == expected
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["hook_step"]) for r in records] == [(2, 2), (4, 4)]


def test_a_skipped_step_calls_no_optimizer_hooks(tmp_path, data_overrides):
    trainer = build(tmp_path, data_overrides, "trainer.nonfinite=skip",
                    "debug.inject_nonfinite_at_step=2")
    calls = []
    trainer.hooks.after_optimizer_step.append(calls.append)
    trainer.fit()
    assert calls == [1, 3, 4] and trainer.state.skipped_steps == 1


class RecordingEngine:
    """Delegates to the real engine and records the phases the trainer calls."""

    def __init__(self, inner: DataParallelEngine):
        self.inner, self.calls = inner, []
        self.optimizer = inner.optimizer

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def record(*args, **kwargs):
            self.calls.append(name)
            return method(*args, **kwargs)

        return record


def test_the_step_goes_through_the_engine(tmp_path, data_overrides):
    trainer = build(tmp_path, data_overrides)
    recorder: DataParallelEngine = RecordingEngine(trainer.engine)
    trainer.engine = recorder
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step()
    assert recorder.calls == ["unscale_", "grad_norm", "step", "zero_grad"]
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(),
                                                      strict=True))
