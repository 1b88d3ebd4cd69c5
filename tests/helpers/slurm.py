"""A real SLURM cluster on this host for the SLURM tests: munged, slurmctld and two slurmd
daemons (nodes n1 and n2, both on 127.0.0.1, each with this machine's CPUs), all under one
temporary directory, on free ports, with their own munge socket and key, so nothing of the
host's own configuration is used or changed.

Accounting is the job-completion log (``JobCompType=jobcomp/filetxt``), which ``sacct
--completion`` reads; no database is needed.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.spawn import free_port

DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
        "BOOT_FAIL", "DEADLINE", "PREEMPTED")


def _conf(root: Path, ports: list[int]) -> str:
    cpus = os.cpu_count() or 1
    return f"""\
ClusterName=triforge-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=30
NodeName=n[1-2] NodeHostname={os.uname().nodename} NodeAddr=127.0.0.1 Port={ports[1]}-{ports[2]} CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _consecutive_free_ports() -> list[int]:
    """A controller port and two adjacent slurmd ports (a node range takes a port range)."""
    while True:
        first = free_port()
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", first + 1))
                b.bind(("127.0.0.1", first + 2))
        except OSError:
            continue
        return [first, first + 1, first + 2]


@dataclass
class LocalSlurm:
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    def run(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env,
                              timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def start(self) -> LocalSlurm:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        (self.root / "munge").chmod(0o755)
        (self.root / "slurm.conf").write_text(_conf(self.root, _consecutive_free_ports()))
        m = self.root / "munge"
        self.run("munged", "--force", f"--socket={m}/socket", f"--key-file={key}",
                 f"--log-file={self.root}/log/munged.log", f"--pid-file={m}/munged.pid",
                 f"--seed-file={m}/munged.seed")
        self.run("slurmctld")
        for node in ("n1", "n2"):
            self.run("slurmd", "-N", node)
        self._wait_idle()
        return self

    def _wait_idle(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).split()
            if len(states) == 2 and all(s == "idle" for s in states):
                return
            time.sleep(0.5)
        logs = "\n".join(p.read_text()[-1500:] for p in (self.root / "log").glob("*.log"))
        raise RuntimeError(f"the local SLURM cluster did not come up idle:\n{logs}")

    def stop(self) -> None:
        """Cancel what is left, stop the daemons and wait until they are gone."""
        self.run("scancel", "--user=root", check=False)
        self.run("scontrol", "shutdown", check=False)
        pids = [int(p.read_text()) for p in self.root.glob("*.pid") if p.read_text().strip()]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        munged = self.root / "munge" / "munged.pid"
        if munged.is_file():
            _kill(int(munged.read_text()), signal.SIGTERM)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, Reason, ...)."""
        text = self.run("scontrol", "show", "job", job_id, "-o")
        return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)

    def wait(self, job_id: str, *, timeout: float = 600) -> dict[str, str]:
        """Poll the job until it has ended; returns its last ``scontrol show job`` fields.

        Slurm holds a requeued job back for two minutes before it may start again; this
        releases it sooner, but only once the clock has passed the requeue's second by two:
        the node refuses a job whose credential dates from the same second as the revoked
        credential of its previous run ("Job credential revoked"), and a release that early
        would fail the job. Nothing else about the job changes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info["JobState"] in DONE:
                return info
            if info["JobState"] == "PENDING" and info.get("Reason") == "BeginTime":
                requeued = time.mktime(time.strptime(info["SubmitTime"], "%Y-%m-%dT%H:%M:%S"))
                if time.time() >= requeued + 2:
                    self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now",
                             check=False)
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} still {self.job(job_id)['JobState']} "
                             f"after {timeout} s")

    def completion_states(self, job_id: str) -> list[str]:
        """The job's states in the job-completion log, one per time it ended."""
        out = self.run("sacct", "--completion", "-n", "-P", "-j", job_id, "-o", "JobID,State")
        return [row.split("|")[1] for row in out.splitlines() if row.split("|")[0] == job_id]


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def submitted_job_id(stdout: str) -> str:
    found = re.search(r"submitted job (\d+)", stdout)
    assert found, stdout
    return found.group(1)
