"""Run a training command (one process or torchrun) with a time bound that explains a hang.

A run still going after ``timeout`` is hung: a tiny model's run takes well under a minute,
even on a loaded 2-core machine. Rather than kill it silently (which leaves the workers
behind, orphaned, still holding their sockets and CPU), every process under the command is
sent SIGABRT; with ``PYTHONFAULTHANDLER`` set, each first writes every thread's Python stack
to stderr. The test then fails with those stacks, so the place of the hang is on record,
and the whole process tree is gone before the next test starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

TIMEOUT_S = 400
DUMP_WAIT_S = 15


def run_bounded(cmd: list[str], *, env: dict[str, str] | None = None,
                timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = _dump_and_kill(proc)
        raise AssertionError(f"still running after {timeout} s (hung); each process's "
                             f"threads at that moment:\n{err[-12000:]}\n--- stdout tail:\n"
                             f"{out[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _dump_and_kill(proc: subprocess.Popen) -> tuple[str, str]:
    for pid in _descendants(proc.pid):  # the workers: their stacks, then their end
        _signal(pid, signal.SIGABRT)
    try:
        out, err = proc.communicate(timeout=DUMP_WAIT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)  # the launcher did not end: it and all it left
        out, err = proc.communicate()
    _kill_group(proc.pid)
    return out, err


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    return _parents().get(pid, [])


def _descendants(root: int) -> list[int]:
    tree = _parents()
    found, todo = [], list(tree.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def _parents() -> dict[int, list[int]]:
    """Each process's children, by parent pid."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
