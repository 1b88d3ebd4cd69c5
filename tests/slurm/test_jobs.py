"""Jobs on a real SLURM cluster (tests/helpers/slurm.py): submitted with triforge-submit,
completed, preempted and requeued, failed; on one node and across two.

Every job trains the same 2-rank fsdp2 run, so each finished run must have the per-step
losses of the uninterrupted one bit for bit, however it was launched or interrupted.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.runs import COMMON
from tests.helpers.slurm import LocalSlurm, submitted_job_id
from tests.helpers.spawn import free_port

pytestmark = [pytest.mark.slurm, pytest.mark.distributed]

STEPS = 60
TRAIN = [*[a for a in COMMON if not a.startswith(("trainer.max_steps", "checkpoint.",
                                                   "trainer.eval_every"))],
         f"trainer.max_steps={STEPS}", "checkpoint.every=10", "checkpoint.keep=0",
         "trainer.eval_every=0", "parallel.dp_shard=2"]
CPU_JOB = ["slurm.gpus_per_node=0", "slurm.cpus_per_proc=1", "slurm.time=10"]
ONE_NODE = ["slurm.procs_per_node=2"]


def submit(slurm: LocalSlurm, run_dir: Path, data: list[str], *extra: str) -> str:
    cmd = [str(Path(sys.executable).parent / "triforge-submit"), *TRAIN, *data,
           f"run.dir={run_dir}", *CPU_JOB, f"slurm.port={free_port()}", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**slurm.env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return submitted_job_id(proc.stdout)


def log_of(run_dir: Path, job: str) -> str:
    return (run_dir / "slurm" / f"{job}.out").read_text()


def losses(run_dir: Path) -> dict[int, float]:
    """Per step, the loss of the last time the step ran (a resumed run repeats none, but a
    step logged twice would show here as a different loss, not be hidden)."""
    import json
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").open())
            if "loss" in r}


# Jobs to be preempted hold after step 10 (and its checkpoint) until the signal arrives, so
# it lands at step 10 however loaded the machine is; training is otherwise unchanged.
HOLD = "debug.hold_for_signal_at_step=10"


def preempt_after_first_checkpoint(slurm: LocalSlurm, run_dir: Path, job: str) -> None:
    """Wait for step_10 to be committed, then send the time-limit notice as Slurm does."""
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "step_10").is_dir():
        assert time.monotonic() < deadline, log_of(run_dir, job)[-2000:]
        assert slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), log_of(run_dir, job)
        time.sleep(0.05)
    slurm.run("scancel", "--signal=USR1", job)


@pytest.fixture(scope="module")
def straight(slurm, tmp_path_factory, data_overrides) -> tuple[str, Path]:
    """The reference: an uninterrupted job, one task per process (slurm.launch=srun)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    job = submit(slurm, run_dir, data_overrides, *ONE_NODE, "slurm.launch=srun")
    info = slurm.wait(job)
    assert info["JobState"] == "COMPLETED", log_of(run_dir, job)[-3000:]
    return job, run_dir


def test_submitted_job_completes_with_metrics_checkpoint_and_accounting(slurm, straight):
    job, run_dir = straight
    assert slurm.completion_states(job) == ["COMPLETED"]
    assert max(losses(run_dir)) == STEPS
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS}"
    log = log_of(run_dir, job)
    assert "srun, 1 x 2 processes" in log and "status 0; not requeued" in log
    status = subprocess.run([str(Path(sys.executable).parent / "triforge-status"),
                             f"run.dir={run_dir}"], capture_output=True, text=True,
                            env=slurm.env)
    assert status.returncode == 0, status.stderr
    assert f"job {job}: COMPLETED (exit 0:0)" in status.stdout
    assert f"last logged step: {STEPS}" in status.stdout
    assert f"last checkpoint: step_{STEPS}" in status.stdout


def test_preempted_job_requeues_itself_and_resumes_bit_for_bit(slurm, straight, tmp_path,
                                                               data_overrides):
    run_dir = tmp_path / "run"
    job = submit(slurm, run_dir, data_overrides, *ONE_NODE, HOLD)  # slurm.launch=torchrun
    again = subprocess.run([str(Path(sys.executable).parent / "triforge-submit"), *TRAIN,
                            *data_overrides, f"run.dir={run_dir}", *CPU_JOB, *ONE_NODE],
                           capture_output=True, text=True, env=slurm.env, timeout=120)
    assert again.returncode == 2 and f"already has job {job}" in again.stderr  # not twice
    preempt_after_first_checkpoint(slurm, run_dir, job)
    info = slurm.wait(job)
    log = log_of(run_dir, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    assert slurm.completion_states(job)[-1] == "COMPLETED"
    saved = log.split("preempted: checkpoint step_", 1)[1].split()[0]
    assert saved == "10" and "after SIGUSR1" in log
    assert f"requeueing job {job} (1 of 10)" in log
    assert f"resumed from {run_dir / 'checkpoints' / ('step_' + saved)} at step {saved}" in log
    assert "torchrun: workers exited (rank 0: 75, rank 1: 75); exiting 75" in log
    assert losses(run_dir) == losses(straight[1])


def test_requeue_cap_is_kept_and_srun_passes_on_exit_75(slurm, tmp_path, data_overrides):
    run_dir = tmp_path / "run"
    job = submit(slurm, run_dir, data_overrides, *ONE_NODE, "slurm.launch=srun",
                 "slurm.max_requeues=0", HOLD)
    preempt_after_first_checkpoint(slurm, run_dir, job)
    info = slurm.wait(job)
    log = log_of(run_dir, job)
    assert info["Restarts"] == "0" and info["ExitCode"] == "75:0", log[-3000:]
    assert "preempted, not requeued: already requeued 0 times (slurm.max_requeues=0)" in log
    assert max(losses(run_dir)) == 10
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_10"


def test_job_failing_on_bad_input_is_not_requeued(slurm, tmp_path, data_overrides):
    run_dir, missing = tmp_path / "run", tmp_path / "no-such-corpus"
    job = submit(slurm, run_dir, [*data_overrides, f"data.paths=[{missing}]"], *ONE_NODE)
    info = slurm.wait(job)
    log = log_of(run_dir, job)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert errors and all(str(missing) in line for line in errors), log[-3000:]
    assert "Traceback" not in log
    assert "training exited with status 2; not requeued" in log


def test_two_node_job_meets_in_one_rendezvous_and_survives_preemption(slurm, straight,
                                                                      tmp_path,
                                                                      data_overrides):
    """Nodes n1 and n2 are two slurmd daemons on this host: the job runs one torchrun per
    node, with the c10d rendezvous on the first node, as on a real multi-node cluster."""
    run_dir = tmp_path / "run"
    job = submit(slurm, run_dir, data_overrides, "slurm.nodes=2", "slurm.procs_per_node=1",
                 HOLD)
    preempt_after_first_checkpoint(slurm, run_dir, job)
    info = slurm.wait(job)
    log = log_of(run_dir, job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    assert "on n[1-2], torchrun, 2 x 1 processes" in log
    assert losses(run_dir) == losses(straight[1])
