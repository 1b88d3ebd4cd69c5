"""The batch script triforge-submit renders: inert for any config value, valid bash, and
faithful to the job's overrides; the checks that stop a bad job before it is queued."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from triforge.launcher.env import read_env
from triforge.launcher.torchrun import workers_status
from triforge.slurm.config import SlurmConfig
from triforge.slurm.render import directives
from triforge.slurm.submit import main as submit_main

CPU = ["model=tiny", "slurm.gpus_per_node=0", "slurm.procs_per_node=2"]


def submit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """triforge-submit in this process (the CLI through ``python -m`` is tested below)."""
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = submit_main(list(args))
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def train_args_as_bash_sees_them(script: str, tmp_path: Path) -> list[str]:
    """Run the script's variable block (up to the first Slurm command) and print TRAIN_ARGS."""
    block = script.split("RESTARTS=", 1)[0].split("set -uo pipefail", 1)[1]
    probe = tmp_path / "probe.sh"
    probe.write_text(block + '\nprintf "%s\\0" "${TRAIN_ARGS[@]}"\n')
    out = subprocess.run(["bash", str(probe)], capture_output=True, check=True, cwd=tmp_path)
    return out.stdout.decode().split("\0")[:-1]


HOSTILE = [
    "logging.wandb.project='a$(touch CANARY);`touch CANARY`'",
    "logging.wandb.project='x\"; touch CANARY; echo \"'",
    "data.paths=['/tmp/$(touch CANARY)', \"/tmp/it's;touch CANARY\"]",
    "run.dir='runs/a b$(touch CANARY)`touch CANARY`;x'",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_dry_run_with_hostile_values_is_inert_valid_bash_and_faithful(tmp_path, value):
    proc = submit("--dry-run", *CPU, value, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    assert train_args_as_bash_sees_them(script, tmp_path) == ["model=tiny", value]
    assert not (tmp_path / "CANARY").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "probe.sh"]  # a dry run writes nothing


def test_script_starts_training_the_way_each_launch_needs(tmp_path):
    torchrun = submit("--dry-run", *CPU, "slurm.nodes=2", cwd=tmp_path).stdout
    assert "#SBATCH --ntasks-per-node=1\n" in torchrun
    assert "-m triforge.launcher.torchrun --nnodes=" in torchrun
    assert "#SBATCH --signal=USR1@120\n#SBATCH --requeue\n#SBATCH --open-mode=append" in torchrun
    assert "--gpus-per-node" not in torchrun  # a CPU job asks for no GPUs
    assert "#SBATCH --cpus-per-task=8\n" in torchrun  # the node's one task: 2 procs x 4
    srun = submit("--dry-run", *CPU, "slurm.launch=srun", cwd=tmp_path).stdout
    assert "#SBATCH --ntasks-per-node=2\n#" in srun
    assert "#SBATCH --cpus-per-task=4\n" in srun
    assert 'srun --kill-on-bad-exit=0 "$PYTHON" -m triforge.launcher.train' in srun


@pytest.mark.parametrize(("override", "field", "value"), [
    ("slurm.time=4:00:00", "time", "4:00:00"),  # YAML would read 14400 (sexagesimal)
    ("slurm.time=12:00:00", "time", "12:00:00"),
    ("slurm.account=0123", "account", "0123"),
    ("slurm.job_name=yes", "job_name", "yes"),
    ("slurm.qos=1e3", "qos", "1e3"),
])
def test_text_values_reach_the_directives_as_written(override, field, value):
    from triforge.slurm.config import load_slurm_config
    cfg = load_slurm_config([override])
    assert getattr(cfg, field) == value
    assert f"={value}" in "\n".join(directives(cfg))


def test_status_reads_what_a_running_job_leaves_half_written(tmp_path):
    from triforge.slurm.status import describe
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "jobs.jsonl").write_text("")
    assert describe(tmp_path)[0].startswith("error: ") and "no submitted job" in describe(
        tmp_path)[0]
    (tmp_path / "slurm" / "jobs.jsonl").write_text('{"job_id": "7"}\n{"job_')
    (tmp_path / "metrics.jsonl").write_text('{"step": 3, "loss": 1.0}\n{"step": 4, "lo')
    lines = describe(tmp_path)
    assert lines[0].startswith("job 7: ") and "last logged step: 3" in lines


def test_directives_carry_the_allocation():
    cfg = SlurmConfig(nodes=4, gpus_per_node=8, cpus_per_proc=6, partition="gpu",
                      account="proj-1", time="2-00:00:00", extra=["--exclusive", "--mem=0"])
    lines = directives(cfg)
    for expected in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8",
                     "--cpus-per-task=48", "--partition=gpu", "--account=proj-1",
                     "--time=2-00:00:00", "--exclusive", "--mem=0"):
        assert f"#SBATCH {expected}" in lines


@pytest.mark.parametrize(("args", "message"), [
    (["slurm.partition=a;b"], "slurm.partition='a;b' may only hold"),
    (["slurm.extra=[--mem=0;rm]"], "slurm.extra item '--mem=0;rm'"),
    (["slurm.nodez=2"], "unknown key slurm.nodez; did you mean slurm.nodes?"),
    (["slurm.time=soon"], "slurm.time='soon' is not a SLURM time"),
    (["slurm.launch=mpirun"], "slurm.launch='mpirun' is not one of"),
    (["slurm.gpus_per_node=0"], "slurm.procs_per_node is 0 and so is slurm.gpus_per_node"),
    (["slurm.nodes=two"], "slurm.nodes"),
    # the job's own checks, at the world size of the allocation: 1 x 3 ranks, tp 2
    (["slurm.gpus_per_node=3", "parallel.tp=2"], "WORLD_SIZE(3)"),
    (["slurm.gpus_per_node=0", "slurm.procs_per_node=1", "trainer.device=cuda"],
     "slurm.gpus_per_node=0 requests no GPUs"),
])
def test_a_job_that_cannot_run_fails_before_it_is_queued(tmp_path, args, message):
    proc = submit(f"run.dir={tmp_path / 'run'}", "model=tiny", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_python_m_triforge_submit_is_the_same_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "triforge", "submit", "--dry-run", *CPU],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == submit("--dry-run", *CPU, cwd=tmp_path).stdout


def test_status_of_a_directory_without_a_job_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "triforge", "status", f"run.dir={tmp_path}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "has no submitted job" in proc.stderr
    empty = subprocess.run([sys.executable, "-m", "triforge", "status", "run.dir="],
                           capture_output=True, text=True)
    assert empty.returncode == 2 and empty.stderr.startswith("usage:")


@pytest.mark.parametrize(("codes", "status"), [
    ([75, 75], 75), ([75, -15], 75), ([2], 2), ([2, -15], 2), ([75, 2], 1), ([1], 1),
    ([-9], 1), ([139, 75], 1),
])
def test_torchrun_exits_with_the_workers_shared_status(codes, status):
    assert workers_status(codes) == status


def test_srun_tasks_meet_at_the_address_the_script_exports():
    slurm = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_NODELIST": "n[1-2]"}
    assert read_env(slurm).master_addr == "n1"
    assert read_env({**slurm, "MASTER_ADDR": "10.0.0.7"}).master_addr == "10.0.0.7"
