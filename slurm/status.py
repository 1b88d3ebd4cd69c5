"""``triforge-status run.dir=DIR`` (or ``triforge-submit --status run.dir=DIR``): the state
of the run's last submitted job as SLURM reports it, its last logged step and its last
committed checkpoint.

The state comes from ``squeue`` while the job is queued or running, then from ``sacct``
(the accounting database, or the job-completion log with ``sacct --completion`` on
clusters without one), then from ``scontrol show job`` while the controller remembers it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .config import JOB_DIR


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def active_state(job_id: str) -> str | None:
    """The job's state while it is queued or running (squeue knows it), else None."""
    queued = _run(["squeue", "-h", "-j", job_id, "-o", "%T"])
    return queued.splitlines()[0] if queued else None


def job_state(job_id: str) -> str:
    """'RUNNING', 'COMPLETED (exit 0:0)', ... or 'unknown' when no SLURM command knows it."""
    queued = active_state(job_id)
    if queued:
        return queued
    fields = ["-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode"]
    history = _run(["sacct", "-X", *fields]) or _run(["sacct", "--completion", *fields])
    if history:
        rows = [line.split("|") for line in history.splitlines()]
        return " -> ".join(f"{row[1]} (exit {row[2]})" for row in rows if row[0] == job_id)
    shown = _run(["scontrol", "show", "job", job_id, "-o"])
    if shown:
        info = dict(kv.split("=", 1) for kv in shown.split() if "=" in kv)
        return f"{info.get('JobState', '?')} (exit {info.get('ExitCode', '?')})"
    return "unknown"


def _records(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file, skipping lines that do not parse (a line being
    written while the job runs)."""
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def last_job(run_dir: Path) -> str | None:
    """The id of the last job triforge-submit submitted for ``run_dir``, if any."""
    jobs = [r["job_id"] for r in _records(run_dir / JOB_DIR / "jobs.jsonl")
            if isinstance(r.get("job_id"), str)]
    return jobs[-1] if jobs else None


def describe(run_dir: Path) -> list[str]:
    """The status lines for ``run_dir``; the first names the problem if there is no job."""
    job_id = last_job(run_dir)
    if job_id is None:
        return [f"error: {run_dir} has no submitted job (nothing readable in "
                f"{run_dir / JOB_DIR / 'jobs.jsonl'}); submit with triforge-submit"]
    lines = [f"job {job_id}: {job_state(job_id)}", f"log: {run_dir / JOB_DIR / (job_id + '.out')}"]
    steps = [r["step"] for r in _records(run_dir / "metrics.jsonl")
             if isinstance(r.get("step"), int)]
    lines.append(f"last logged step: {max(steps) if steps else 'none yet'}")
    latest = run_dir / "checkpoints" / "latest"
    lines.append(f"last checkpoint: {latest.read_text().strip() if latest.is_file() else 'none'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dirs = [a.split("=", 1)[1] for a in args if a.startswith("run.dir=")]
    if len(dirs) != 1 or len(args) != 1 or not dirs[0].strip():
        print("usage: triforge-status run.dir=DIR", file=sys.stderr)
        return 2
    lines = describe(Path(dirs[0]).expanduser().resolve())
    print("\n".join(lines), file=sys.stderr if lines[0].startswith("error:") else sys.stdout)
    return 2 if lines[0].startswith("error:") else 0


if __name__ == "__main__":
    sys.exit(main())
