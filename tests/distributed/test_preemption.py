"""Preemption and crashes: a signalled job saves and exits for requeue; a killed rank under
``torchrun --max-restarts`` resumes from the last good checkpoint. Either way the finished
run has the loss sequence of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.bounded import children
from tests.helpers.runs import COMMON, run_layout

EXIT_PREEMPTED = 75
# The signalled runs wait after step 13 until their signal arrives (training is otherwise
# unchanged), so the signal lands there however loaded the machine is.
HOLD = "debug.hold_for_signal_at_step=13"
STEPS = 60
RUN = [*[a for a in COMMON if not a.startswith(("trainer.max_steps", "checkpoint."))],
       f"trainer.max_steps={STEPS}", "checkpoint.every=10", "checkpoint.keep=0",
       "trainer.eval_every=0"]


def command(run_dir: Path, data_overrides, nproc: int, *extra: str) -> list[str]:
    args = [*RUN, *data_overrides, f"run.dir={run_dir}", *extra]
    if nproc == 1:
        return [sys.executable, "-m", "triforge.launcher.train", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m",
            "triforge.launcher.train", *args]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if metrics.is_file() and any(r["step"] >= step for r in complete_records(metrics)):
            return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def complete_records(metrics: Path) -> list[dict]:
    """The last few records, leaving out a line the run is still writing."""
    out = []
    for line in metrics.read_text().splitlines()[-3:]:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def last_losses(run_dir: Path) -> dict[int, float]:
    """Per step, the loss of the last time the step ran (a restarted run repeats steps)."""
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").open())}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_overrides) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("straight")
    run_layout(run_dir, 1, [], data_overrides, RUN)
    return last_losses(run_dir)


@pytest.fixture(scope="module")
def straight_fsdp2(tmp_path_factory, data_overrides) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("straight_fsdp2")
    run_layout(run_dir, 2, ["parallel.dp_shard=2"], data_overrides, RUN)
    return last_losses(run_dir)


@pytest.mark.distributed
# SIGTERM takes the same path and is covered under torchrun below; one signal keeps CI short.
@pytest.mark.parametrize("sig", [signal.SIGUSR1])
def test_signal_saves_exits_for_requeue_and_resumes(tmp_path, data_overrides, straight, sig):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = start(command(run_dir, data_overrides, 1, HOLD), log)
    wait_for_step(run_dir, 13, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == EXIT_PREEMPTED, log.read_text()[-2000:]
    step = max(last_losses(run_dir))
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{step}"
    assert f"preempted: checkpoint step_{step} committed" in log.read_text()
    assert f"after {sig.name}" in log.read_text()
    run_layout(run_dir, 1, [], data_overrides, RUN)  # the requeued job: the same command
    assert last_losses(run_dir) == straight


@pytest.mark.distributed
def test_sigterm_to_torchrun_saves_on_every_rank(tmp_path, data_overrides, straight_fsdp2):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = start(command(run_dir, data_overrides, 2, "parallel.dp_shard=2", HOLD), log)
    wait_for_step(run_dir, 13, proc)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to its workers
    proc.wait(timeout=120)
    text = log.read_text()
    step = max(last_losses(run_dir))
    assert f"preempted: checkpoint step_{step} committed" in text, text[-2000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{step}"
    run_layout(run_dir, 2, ["parallel.dp_shard=2"], data_overrides, RUN)
    assert last_losses(run_dir) == straight_fsdp2  # bit for bit


@pytest.mark.distributed
def test_sigkill_of_a_rank_restarts_from_last_checkpoint(tmp_path, data_overrides,
                                                         straight_fsdp2):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    cmd = command(run_dir, data_overrides, 2, "parallel.dp_shard=2")
    cmd.insert(cmd.index("-m", 3), "--max-restarts=1")
    proc = start(cmd, log)
    wait_for_step(run_dir, 25, proc)
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "resumed from" in text and "step_20" in text
    assert last_losses(run_dir) == straight_fsdp2  # bit for bit
