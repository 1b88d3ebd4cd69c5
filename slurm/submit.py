"""``triforge-submit [--dry-run] [job overrides] slurm.nodes=N slurm.gpus_per_node=G ...``

Checks the job as ``triforge-train`` would (config, layout against the world size the
allocation gives, run directory), so a job that cannot run fails here and not after it waited
in the queue; then renders the batch script into ``RUN_DIR/slurm/job.sbatch`` and submits it.
``--dry-run`` prints the script and submits nothing. The job's data is not checked here: it
is read on the cluster's nodes, and a bad path fails the job with its one-line error.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from triforge.errors import ConfigError, TriforgeError
from triforge.launcher.config import load_config
from triforge.launcher.env import ProcessEnv
from triforge.launcher.train import check_run_dir, resolve_layout

from .config import JOB_DIR, SlurmConfig, load_slurm_config, split_overrides
from .render import render
from .status import active_state, last_job


def prepare(args: list[str]) -> tuple[SlurmConfig, Path, str]:
    """The allocation, the absolute run directory and the script for ``args``."""
    slurm_args, job_args = split_overrides(args)
    cfg = load_slurm_config(slurm_args)
    job = load_config(job_args)
    resolve_layout(job, ProcessEnv(world_size=cfg.world_size))
    if job.trainer.device == "cuda" and not cfg.gpus_per_node:
        raise ConfigError("config: trainer.device=cuda but slurm.gpus_per_node=0 requests no "
                          "GPUs; set slurm.gpus_per_node or trainer.device=cpu")
    run_dir = check_run_dir(job.run.dir).resolve()
    if any(ord(c) < 32 for c in str(run_dir)):
        raise ConfigError(f"config: run.dir={str(run_dir)!r} holds a control character "
                          "(a newline?); name the run directory without one")
    # The job gets the overrides as they were given and starts in this directory, so
    # relative paths mean what they meant here.
    script = render(cfg, train_args=job_args, workdir=str(Path.cwd()), python=sys.executable)
    return cfg, run_dir, script


def sbatch_command(run_dir: Path, script_path: Path) -> list[str]:
    # %j is the job id in Slurm's file patterns; a literal % is written %%.
    log = str(run_dir / JOB_DIR).replace("%", "%%") + "/%j.out"
    return ["sbatch", "--parsable", f"--output={log}", str(script_path)]


def submit(run_dir: Path, script: str) -> tuple[str, Path]:
    """Write the script, run sbatch and record the job; returns (job id, log path)."""
    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch is not on PATH: run triforge-submit where SLURM's client "
                          "commands are installed (a login node), or --dry-run to see the script")
    previous = last_job(run_dir)
    if previous is not None and (state := active_state(previous)) is not None:
        raise ConfigError(f"run.dir={run_dir} already has job {previous} {state}; two jobs "
                          "would write the same checkpoints: wait for it, scancel it, or "
                          "choose another run.dir")
    job_dir = run_dir / JOB_DIR
    job_dir.mkdir(parents=True, exist_ok=True)
    script_path = job_dir / "job.sbatch"
    script_path.write_text(script)
    proc = subprocess.run(sbatch_command(run_dir, script_path), capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ConfigError(f"sbatch refused the job: {reason}")
    job_id = proc.stdout.strip().split(";")[0]
    with (job_dir / "jobs.jsonl").open("a") as f:
        f.write(json.dumps({"job_id": job_id, "submitted": time.time()}) + "\n")
    return job_id, job_dir / f"{job_id}.out"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--status" in args:
        from .status import main as status_main
        return status_main([a for a in args if a != "--status"])
    dry_run = "--dry-run" in args
    args = [a for a in args if a != "--dry-run"]
    try:
        _, run_dir, script = prepare(args)
        if dry_run:
            print(script, end="")
            command = sbatch_command(run_dir, run_dir / JOB_DIR / "job.sbatch")
            print(f"dry run: would write the script and run {shlex.join(command)}",
                  file=sys.stderr)
            return 0
        job_id, log = submit(run_dir, script)
    except TriforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"submitted job {job_id}; log: {log}")
    print(f"status: triforge-status run.dir={shlex.quote(str(run_dir))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
