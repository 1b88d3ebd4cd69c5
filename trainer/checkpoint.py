"""Checkpoints in ``<run.dir>/checkpoints/step_N/`` with a ``latest`` pointer.

Commit protocol: everything is written into ``step_N.tmp/``, the directory is renamed to
``step_N/``, then ``latest`` is replaced atomically (write a temp file, rename). A crash at any
point leaves the previous checkpoint and pointer intact, and a ``.tmp`` directory is never
loaded. Tensors go through torch.distributed.checkpoint (sharded files once parallelism
shards the model); the rest is JSON.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import warnings
from pathlib import Path

import torch.distributed.checkpoint as dcp

from triforge.errors import CheckpointError
from triforge.parallel.context import ParallelContext

from .config import CheckpointConfig

_STEP_DIR = re.compile(r"^step_(\d+)$")
TENSORS = "tensors"
STATE_FILE = "state.json"


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns when it runs without a process group; that is the single-process case."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*process group.*")
        warnings.filterwarnings("ignore", message=".*torch.distributed.*")
        yield


class Checkpointer:
    """Saves and finds checkpoints. With several ranks, every rank writes its tensor shards
    (DCP) while the main rank alone creates, renames and prunes directories, with barriers
    between the phases so no rank sees a half-committed checkpoint."""

    def __init__(self, run_dir: Path, cfg: CheckpointConfig, *, log=print,
                 ctx: ParallelContext | None = None):
        self.root = Path(run_dir) / "checkpoints"
        self.cfg = cfg
        self.log = log
        self.ctx = ctx or ParallelContext.single()

    def should_save(self, step: int) -> bool:
        return self.cfg.every > 0 and step % self.cfg.every == 0

    def complete_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        steps = [int(m.group(1)) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name))]
        return sorted(steps)

    def save(self, step: int, tensor_state, json_state: dict, *, config_yaml: str) -> Path:
        """Write checkpoint ``step`` with the commit protocol; returns its directory."""
        final = self.root / f"step_{step}"
        tmp = self.root / f"step_{step}.tmp"
        if self.ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.ctx.barrier()
        with _single_process_ok():
            dcp.save({"app": tensor_state}, checkpoint_id=str(tmp / TENSORS))
        state = {name: obj.state_dict() for name, obj in json_state.items()}
        if self.ctx.is_main:
            (tmp / STATE_FILE).write_text(json.dumps(state))
            (tmp / "config.yaml").write_text(config_yaml)
            self._commit(tmp, final)
            self._retain(keep_step=step)
        self.ctx.barrier()
        return final

    def _commit(self, tmp: Path, final: Path) -> None:
        if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        tmp.rename(final)
        pointer_tmp = self.root / "latest.tmp"
        pointer_tmp.write_text(final.name + "\n")
        pointer_tmp.replace(self.root / "latest")

    def _retain(self, keep_step: int) -> None:
        if self.cfg.keep <= 0:
            return
        for old in self.complete_steps()[: -self.cfg.keep]:
            if old != keep_step:
                shutil.rmtree(self.root / f"step_{old}", ignore_errors=True)

    def find_resume(self) -> Path | None:
        """The checkpoint to resume from according to ``checkpoint.resume``."""
        mode = self.cfg.resume
        if mode == "none":
            if self.complete_steps():
                raise CheckpointError(
                    f"{self.root} already holds checkpoints and checkpoint.resume=none would "
                    "overwrite them; use a new run.dir or checkpoint.resume=auto"
                )
            return None
        if mode != "auto":
            path = Path(mode).expanduser()
            if not (path / STATE_FILE).is_file():
                raise CheckpointError(f"checkpoint.resume={mode} is not a checkpoint directory")
            return path
        pointer = self.root / "latest"
        if pointer.is_file():
            path = self.root / pointer.read_text().strip()
            if (path / STATE_FILE).is_file():
                return path
            self.log(f"[warn] {pointer} names {path.name}, which is incomplete; scanning")
        steps = self.complete_steps()
        return self.root / f"step_{steps[-1]}" if steps else None

    def load(self, path: Path, tensor_state, json_state: dict) -> None:
        """Restore ``tensor_state`` (Stateful) and each JSON-state object from ``path``."""
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path / STATE_FILE} is unreadable ({exc})") from None
        for name, obj in json_state.items():
            if name not in state:
                raise CheckpointError(f"{path} has no '{name}' state; it is not a triforge checkpoint")
            obj.load_state_dict(state[name])
        self.load_tensors(path, tensor_state)

    @staticmethod
    def load_tensors(path: Path, tensor_state) -> None:
        """Restore the tensors ``tensor_state.state_dict()`` asks for (a subset is fine)."""
        try:
            with _single_process_ok():
                dcp.load({"app": tensor_state}, checkpoint_id=str(path / TENSORS))
        except Exception as exc:  # DCP raises many types; its first line names the problem
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"cannot load {path / TENSORS}: {first}") from exc
