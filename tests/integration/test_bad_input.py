"""Values the schema accepts but this job cannot run are refused before any work, in one
line: each was a traceback (or a 7 TiB allocation) before."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

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
    (["trainer.compile=true", "model=moe_tiny"], r"trainer.compile=true covers dense models"),
    (["parallel.engine=megatron"], r"parallel.engine='megatron' is not one of"),
    (["parallel.engine=deepspeed", "parallel.zero_stage=4"],
     r"parallel.zero_stage\(4\) must be 1, 2 or 3"),
    (["parallel.engine=deepspeed", "parallel.tp=2"],
     r"parallel.engine=deepspeed is data parallelism of a dense model only"),
    (["parallel.engine=deepspeed", "trainer.spike_zscore=4", "trainer.compile=true"],
     r"does not support trainer.spike_zscore, trainer.compile yet"),
    (["parallel.engine=deepspeed", "precision=fp16", "precision.growth_factor=3"],
     r"precision=fp16 under parallel.engine=deepspeed scales by 2 and 1/2"),
    (["parallel.engine=deepspeed", "precision=fp16", "precision.initial_scale=1000"],
     r"precision.initial_scale\(1000.0\) must be a power of two"),
    (["debug.inject_nonfinite_into=overflow"],
     r"debug.inject_nonfinite_into=overflow needs precision=fp16"),
    (["model.norm_impl=triton", "trainer.compile=true"],
     r"model.norm_impl=triton is not covered by trainer.compile yet"),
    (["parallel.cp=2", "trainer.seq_len=34"],
     r"parallel.cp\(2\) cuts each sequence into 2 \* cp = 4 equal chunks: "
     r"trainer.seq_len\(34\) must be divisible by 4"),
    (["parallel.cp=2", "trainer.compile=true"], r"parallel.cp\(2\) is not covered by trainer.compile"),
    (["parallel.cp=2", "model=moe_tiny"], r"mixture-of-experts layers need parallel.cp=1"),
    (["parallel.cp_comm=ring"], r"parallel.cp_comm='ring' is not one of \('p2p', 'allgather'\)"),
])
def test_job_values_that_cannot_run_are_config_errors(tmp_path, data_overrides, overrides,
                                                      pattern):
    job = load_config([*BASE, *data_overrides, f"run.dir={tmp_path / 'run'}", *overrides])
    with pytest.raises(ConfigError, match=pattern) as err:
        train(job, log=lambda *_: None, env=ProcessEnv())
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_deepspeed_fp16_on_a_cpu_without_its_kernels_is_a_config_error(tmp_path, data_overrides,
                                                                        monkeypatch):
    """DeepSpeed asks oneDNN whether this CPU has fp16 kernels; most do not."""
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(get_accelerator(), "is_fp16_supported", lambda: False)
    job = load_config([*BASE, *data_overrides, f"run.dir={tmp_path}", "trainer.device=cpu",
                       "parallel.engine=deepspeed", "precision=fp16"])
    with pytest.raises(ConfigError, match=r"DeepSpeed refuses precision=fp16 on this CPU "
                                          r"\(no oneDNN fp16 kernels\); use precision=bf16"):
        train(job, log=lambda *_: None, env=ProcessEnv())


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


@pytest.mark.distributed
def test_bad_data_found_by_the_main_rank_ends_every_rank_with_its_line(tmp_path,
                                                                      data_overrides):
    """The main rank opens the data while the others wait; its finding must reach them, not
    a closed connection. triforge's torchrun then exits with the workers' status, 2."""
    missing = tmp_path / "no-such-corpus"
    cmd = [sys.executable, "-m", "triforge.launcher.torchrun", "--standalone",
           "--nproc-per-node=2", "-m", "triforge.launcher.train", *BASE, *data_overrides,
           f"data.paths=[{missing}]", f"run.dir={tmp_path / 'run'}", "parallel.dp_shard=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all(str(missing) in line for line in errors), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "torchrun: workers exited (rank 0: 2, rank 1: 2); exiting 2" in proc.stderr


@pytest.mark.parametrize(("data", "pattern"), [
    (["data.format=megatron", "data.dir=@"], r"needs data.dir=PREFIX .* and data.vocab_size"),
    (["data.format=megatron", "data.dir=@", "data.vocab_size=258"],
     r"@.idx not found; data.format=megatron reads PREFIX.bin and PREFIX.idx"),
    (["data.format=megatron", "data.dir=@", "data.vocab_size=258", "data.eos_id=300"],
     r"data.eos_id\(300\) must be in \[0, data.vocab_size\(258\)\)"),
])
def test_a_megatron_dataset_that_is_missing_or_misconfigured_is_one_line(tmp_path, data,
                                                                         pattern):
    prefix = str(tmp_path / "corpus")  # "@" in the overrides and the expected line
    cmd = [sys.executable, "-m", "triforge.launcher.train", *BASE,
           *(d.replace("@", prefix) for d in data), f"run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern.replace("@", prefix), lines[0]), proc.stderr
