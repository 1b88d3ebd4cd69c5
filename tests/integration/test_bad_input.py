"""Values the schema accepts but this job cannot run are refused before any work, in one
line: each was a traceback (or a 7 TiB allocation) before."""

from __future__ import annotations

import json

import pytest

from triforge.errors import CheckpointError, ConfigError
from triforge.launcher.config import load_config
from triforge.launcher.env import ProcessEnv
from triforge.launcher.train import train
from triforge.trainer import manifest

BASE = ["model=tiny", "logging.wandb.enabled=false", "logging.progress_bar=false",
        "trainer.batch_size=4", "trainer.seq_len=32", "trainer.eval_every=0",
        "trainer.sample_at_end=false", "trainer.max_steps=2"]


@pytest.mark.parametrize("overrides, pattern", [
    (["model.vocab_size=100"], r"model.vocab_size\(100\) is smaller than the tokenizer's"),
    (["trainer.batch_size=1000000000000"],
     r"trainer.batch_size\(1000000000000\) exceeds the \d+ training windows"),
])
def test_job_values_that_cannot_run_are_config_errors(tmp_path, data_overrides, overrides,
                                                      pattern):
    job = load_config([*BASE, *data_overrides, f"run.dir={tmp_path / 'run'}", *overrides])
    with pytest.raises(ConfigError, match=pattern) as err:
        train(job, log=lambda *_: None, env=ProcessEnv())
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_triton_on_a_cpu_needs_the_interpreter(tmp_path, data_overrides):
    job = load_config([*BASE, *data_overrides, f"run.dir={tmp_path}", "trainer.device=cpu",
                       "attention.backend=triton"])
    with pytest.raises(ConfigError, match=r"attention.backend=triton needs a CUDA device"):
        train(job, log=lambda *_: None, env=ProcessEnv(triton_interpret=False))


def test_a_damaged_rank_file_is_a_checkpoint_error(tmp_path, data_overrides):
    args = [*BASE, *data_overrides, f"run.dir={tmp_path}", "checkpoint.every=1"]
    train(load_config(args), log=lambda *_: None, env=ProcessEnv())
    step = tmp_path / "checkpoints" / "step_2"
    (step / "ranks" / "rank_0.json").write_text(json.dumps({"rng": {"python": "broken"}}))
    manifest.write_manifest(step)  # re-hashed: the manifest passes, the content does not fit
    job = load_config([*args, "trainer.max_steps=3"])
    with pytest.raises(CheckpointError, match=r"rank_0.json is unreadable") as err:
        train(job, log=lambda *_: None, env=ProcessEnv())
    assert "\n" not in str(err.value)
