"""Checkpoints in ``<run.dir>/checkpoints/step_N/`` with a ``latest`` pointer.

Commit protocol: every rank writes into ``step_N.tmp/``; after a barrier the main rank hashes
all files into ``manifest.json`` (see manifest.py), renames the directory to ``step_N/``, then
replaces ``latest`` atomically (write a temp file, rename). A crash at any point leaves the
previous checkpoint and pointer intact; a ``.tmp`` directory is never loaded, and neither is a
directory whose files disagree with its manifest (truncated, altered, missing). Resuming falls
back to the newest checkpoint that verifies. Tensors go through torch.distributed.checkpoint
(sharded files once parallelism shards the model); the rest is JSON.

The directory must be on a filesystem all ranks share: the main rank alone hashes, verifies,
renames and prunes, and tells the other ranks its verdict.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from triforge.errors import CheckpointError
from triforge.parallel.context import ParallelContext

from . import manifest
from .config import CheckpointConfig

_STEP_DIR = re.compile(r"^step_(\d+)$")
TENSORS = "tensors"
STATE_FILE = "state.json"
RANKS = "ranks"  # one JSON file of per-rank state per rank
T = TypeVar("T")


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns when it runs without a process group; that is the single-process case."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*process group.*")
        warnings.filterwarnings("ignore", message=".*torch.distributed.*")
        yield


class Checkpointer:
    """Saves and finds checkpoints. With several ranks, every rank writes its tensor shards
    (DCP) while the main rank alone creates, hashes, renames, verifies and prunes, with
    barriers between the phases so no rank sees a half-committed checkpoint."""

    def __init__(self, run_dir: Path, cfg: CheckpointConfig, *, log=print,
                 ctx: ParallelContext | None = None, repair: bool = False):
        self.root = Path(run_dir) / "checkpoints"
        self.cfg = cfg
        self.log = log
        self.ctx = ctx or ParallelContext.single()
        self._pending = None  # a background save: (future, tmp, final, step, start time)
        self._group = None  # the process group of background saves
        # Training repairs what a resume found (moves rejected checkpoints aside); tools that
        # only read checkpoints (export, generate) leave the directory as it is.
        self.repair = repair

    def check_writable(self) -> None:
        """Fail before training, not at the first save, when checkpoints cannot be written
        (``checkpoints`` is a file, or the directory is read-only). The main rank checks
        and every rank stops with its message."""
        if self.cfg.every or self.cfg.save_at_end:
            self._decide_on_main(self._probe_writable)

    def _probe_writable(self) -> None:
        probe = self.root / ".write-test"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoints into {self.root} ({exc.strerror}); "
                                  "fix its permissions or choose another run.dir") from None

    def should_save(self, step: int) -> bool:
        return self.cfg.every > 0 and step % self.cfg.every == 0

    def complete_steps(self) -> list[int]:
        """Steps with a committed ``step_N`` directory (by name; ``verify`` checks content)."""
        if not self.root.is_dir():
            return []
        steps = [int(m.group(1)) for p in self.root.iterdir()
                 if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
        return sorted(steps)

    def save(self, step: int, tensor_state, json_state: dict, *, config_yaml: str,
             rank_state: dict | None = None) -> Path:
        """Write checkpoint ``step`` with the commit protocol; returns its directory. Every
        rank calls this. With ``async_save`` it returns once the tensors are copied to host
        memory; ``poll``/``wait`` commit the checkpoint when every rank's write is done."""
        self.wait()  # one background save at a time, committed in order
        start = time.perf_counter()
        final, tmp = self.root / f"step_{step}", self.root / f"step_{step}.tmp"
        if self.ctx.is_main:
            self._remove_uncommitted()
            tmp.mkdir(parents=True)
        self.ctx.barrier()
        self._write_json(tmp, json_state, rank_state or {}, config_yaml)
        if self.cfg.async_save:
            # DCP copies every tensor to host memory before returning (staging), so the next
            # optimizer step cannot change what is being written. Its collectives run in the
            # writer thread, on a group of their own, never interleaved with training's.
            with _single_process_ok():
                group = self._async_group()
                future = dcp.async_save({"app": tensor_state}, checkpoint_id=str(tmp / TENSORS),
                                        process_group=group, no_dist=group is None)
            self._pending = (future, tmp, final, step, start)
            return final
        with _single_process_ok():
            dcp.save({"app": tensor_state}, checkpoint_id=str(tmp / TENSORS))
        self._commit_when_written(tmp, final, step, start)
        return final

    def poll(self) -> None:
        """Commit a background save once every rank has finished writing (checked at step
        boundaries; ranks agree, since the commit needs all of their files)."""
        if self._pending is None:
            return
        world = self.ctx.dims.world_size
        waiting = torch.tensor([world if self._pending[0].done() else self.ctx.rank])
        waiting = self.ctx.min_over_world(waiting.to(self.ctx.collective_device()))
        if int(waiting) >= world:
            self.wait()

    def wait(self) -> None:
        """Block until a background save is written, then commit it."""
        if self._pending is None:
            return
        future, tmp, final, step, start = self._pending
        self._pending = None
        try:
            future.result()
        except Exception as exc:
            raise CheckpointError(f"background save of {final.name} failed: {exc}") from exc
        self._commit_when_written(tmp, final, step, start)

    def _async_group(self):
        if self._group is None:  # created on every rank at the same (first) async save
            self._group = self.ctx.new_group()
        return self._group

    def _write_json(self, tmp: Path, json_state: dict, rank_state: dict, config_yaml: str):
        state = {name: obj.state_dict() for name, obj in json_state.items()}
        own = {name: obj.state_dict() for name, obj in rank_state.items()}
        if own:  # every rank's own file: RNG streams differ per rank
            (tmp / RANKS).mkdir(exist_ok=True)
            (tmp / RANKS / f"rank_{self.ctx.rank}.json").write_text(json.dumps(own))
        if self.ctx.is_main:
            (tmp / STATE_FILE).write_text(json.dumps(state))
            (tmp / "config.yaml").write_text(config_yaml)

    def _commit_when_written(self, tmp: Path, final: Path, step: int, start: float) -> None:
        # The manifest must cover every rank's shards: no hashing before all have written.
        self.ctx.barrier()
        if self.ctx.is_main:
            summary = manifest.write_manifest(tmp)
            self._commit(tmp, final)
            self._retain(keep_step=step)
            self.log(f"checkpoint {final.name} committed in {time.perf_counter() - start:.1f} s "
                     f"(manifest {summary.files} files, {summary.total_bytes / 1e6:.1f} MB, "
                     f"hashed in {summary.seconds:.1f} s)")
        self.ctx.barrier()

    def _remove_uncommitted(self) -> None:
        """Delete ``.tmp`` directories of saves that crashed before their commit."""
        if not self.root.is_dir():
            return
        for stale in self.root.glob("step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
            self.log(f"removed {stale.name}, left by a save that never committed")
        (self.root / "latest.tmp").unlink(missing_ok=True)

    def _commit(self, tmp: Path, final: Path) -> None:
        if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        tmp.rename(final)
        pointer_tmp = self.root / "latest.tmp"
        pointer_tmp.write_text(final.name + "\n")
        pointer_tmp.replace(self.root / "latest")

    def _retain(self, keep_step: int) -> None:
        """Keep the newest ``keep`` sound checkpoints, counting ``keep_step`` (sound: it was
        just hashed) as one, and delete older ones. A broken checkpoint does not take a slot,
        so it never pushes out a good one. Older checkpoints get the quick check (manifest,
        presence, sizes): rehashing them at every save would cost keep-1 full reads."""
        if self.cfg.keep <= 0:
            return
        kept = 1
        for step in reversed(self.complete_steps()):
            path = self.root / f"step_{step}"
            if step == keep_step:
                continue
            if kept < self.cfg.keep:
                if manifest.check(path, hashes=False) is None:
                    kept += 1
                continue
            shutil.rmtree(path, ignore_errors=True)

    def verify(self, path: Path) -> None:
        """Raise CheckpointError (on every rank) unless ``path`` matches its manifest. Every
        rank calls this; the main rank alone reads and hashes the files."""
        self._decide_on_main(lambda: manifest.verify(Path(path)))

    def find_resume(self) -> Path | None:
        """The verified checkpoint to resume from according to ``checkpoint.resume``, or None
        to start fresh. Every rank calls this and gets the same answer: the main rank decides
        (verifying means reading every byte; once is enough) and broadcasts its decision."""
        return self._decide_on_main(self._choose_resume)

    def _decide_on_main(self, decide: Callable[[], T]) -> T:
        """Run ``decide`` on the main rank and give its result, or its error, to every rank,
        so that all ranks load the same checkpoint or all stop with the same message."""
        result, error = None, None
        if self.ctx.is_main:
            try:
                result = decide()
            except Exception as exc:  # other ranks must hear of any failure, not hang
                error = exc
        if self.ctx.distributed:
            verdict = (None if result is None else str(result),
                       None if error is None else str(error))
            path, message = self.ctx.broadcast_from_main(verdict)
            if not self.ctx.is_main:
                result = None if path is None else Path(path)
                error = None if message is None else CheckpointError(message)
        if error is not None:
            raise error
        return result

    def _choose_resume(self) -> Path | None:
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
            if self.complete_steps() and path.resolve().parent != self.root.resolve():
                # A requeued job repeats its command line: the run's own checkpoints are newer
                # than another run's checkpoint it started from.
                self.log(f"{self.root} holds checkpoints: resuming from them, not from "
                         f"checkpoint.resume={mode}")
                return self._newest_verified()
            if path.name.endswith(".tmp"):
                raise CheckpointError(f"checkpoint.resume={mode} is a save that never "
                                      "committed (.tmp); pass a step_N directory")
            if not path.is_dir():
                raise CheckpointError(f"checkpoint.resume={mode} is not a checkpoint directory")
            manifest.verify(path)
            return path
        return self._newest_verified()

    def _candidates(self) -> list[Path]:
        """Every ``step_N`` directory, newest first. ``latest`` only names the last commit;
        a crash between a checkpoint's rename and the pointer's update leaves it one behind,
        so it never outranks a newer checkpoint that verifies."""
        steps = [self.root / f"step_{s}" for s in reversed(self.complete_steps())]
        pointer = self.root / "latest"
        named = _read_pointer(pointer)
        if steps and named is None:
            self.log(f"[warn] {pointer} is missing or unreadable; trying checkpoints newest "
                     "first")
        elif steps and named != steps[0].name:
            self.log(f"[warn] {pointer} names {named}, but {steps[0].name} is newer; trying "
                     "checkpoints newest first")
        return steps

    def _newest_verified(self) -> Path | None:
        """The newest checkpoint that verifies; each rejected one is logged with its fault
        and, once an older one verifies, moved aside (``step_N.rejected-<time>``, kept for
        inspection), so that it no longer counts as saved: training to step N saves it anew."""
        for stale in sorted(self.root.glob("step_*.tmp")) if self.root.is_dir() else []:
            self.log(f"[warn] ignoring {stale.name}: a save that never committed")
        candidates = self._candidates()
        faults = []
        for i, path in enumerate(candidates):
            fault = manifest.check(path)
            if fault is None:
                if self.repair:
                    self._move_aside(candidates[:i])
                return path
            faults.append(f"{path.name} {fault}")
            then = (f"falling back to {candidates[i + 1].name}" if i + 1 < len(candidates)
                    else "no checkpoint left")
            self.log(f"[warn] checkpoint {path.name} rejected: it {fault}; {then}")
        if faults:
            # Starting fresh here would silently overwrite a run that did make progress.
            raise CheckpointError(
                f"none of the {len(faults)} checkpoints in {self.root} verifies (newest: "
                f"{faults[0]}); restore a good copy, point checkpoint.resume at one, or use a "
                "new run.dir"
            )
        return None

    def _move_aside(self, rejected: list[Path]) -> None:
        for path in rejected:
            aside = path.with_name(f"{path.name}.rejected-{int(time.time())}")
            path.rename(aside)
            self.log(f"[warn] moved {path.name} aside to {aside.name}; {path.name} will be "
                     "saved again when training reaches it")

    def load(self, path: Path, tensor_state, json_state: dict, rank_state: dict | None = None,
             ) -> None:
        """Restore ``tensor_state`` (Stateful) and each JSON-state object from ``path``, a
        checkpoint that ``find_resume`` (or ``verify``) has already verified. Checks first
        that the checkpoint's tensors fit the model, on every rank, before any is loaded."""
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path / STATE_FILE} is unreadable ({exc})") from None
        self._check_fits(path, tensor_state)
        for name, obj in json_state.items():
            if not isinstance(state, dict) or name not in state:
                raise CheckpointError(f"{path} has no '{name}' state; it is not a triforge checkpoint")
            try:
                obj.load_state_dict(state[name])
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{path / STATE_FILE} has a malformed '{name}' entry "
                                      f"({type(exc).__name__}: {exc})") from None
        self._load_rank_state(path, rank_state or {})
        self.load_tensors(path, tensor_state)

    def _check_fits(self, path: Path, tensor_state) -> None:
        """Every rank compares its parameters' full shapes with the checkpoint's; all ranks
        stop if any rank finds a mismatch (a pipeline stage may hold none of the mismatching
        parameters, and must not go on into the collective load alone)."""
        wanted = {f"app.model.{k}": tuple(v.shape)
                  for k, v in tensor_state.state_dict()["model"].items()}
        problems = model_mismatches(path, wanted)
        world = self.ctx.dims.world_size
        first = torch.tensor([self.ctx.rank if problems else world])
        first = self.ctx.min_over_world(first.to(self.ctx.collective_device()))
        if problems:
            more = f" and {len(problems) - 6} more" if len(problems) > 6 else ""
            raise CheckpointError(
                f"checkpoint {path} does not fit this model: {'; '.join(problems[:6])}{more}; "
                f"resume with the model settings in {path / 'config.yaml'} or use a new run.dir")
        if int(first) < world:
            raise CheckpointError(f"checkpoint {path} does not fit this model (rank "
                                  f"{int(first)} lists the mismatching parameters)")

    def _load_rank_state(self, path: Path, rank_state: dict) -> None:
        """Each rank's own state (RNG streams), when the checkpoint has this rank's file."""
        if not rank_state:
            return
        own = path / RANKS / f"rank_{self.ctx.rank}.json"
        saved_ranks = len(list((path / RANKS).glob("rank_*.json")))
        if saved_ranks != self.ctx.dims.world_size:
            # Another layout: a saved stream belonged to a rank with another role.
            if self.ctx.is_main:
                self.log(f"[warn] {path.name} was saved by {saved_ranks} ranks, this run has "
                         f"{self.ctx.dims.world_size}: RNG streams stay as seeded")
            return
        try:
            saved = json.loads(own.read_text())
            for name, obj in rank_state.items():
                obj.load_state_dict(saved[name])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{own} is unreadable ({type(exc).__name__}: {exc}); the "
                                  "checkpoint is damaged, resume from another one") from None

    def load_start(self, path: Path, tensor_state) -> None:
        """Another run's checkpoint as this run's start: verified against its manifest and
        checked to fit the model (on every rank), then ``tensor_state``'s tensors loaded
        (the model alone, or with the optimizer); no step, data cursor or RNG state."""
        if not (path / TENSORS).is_dir():
            raise CheckpointError(f"checkpoint.init_from={path} is not a checkpoint directory "
                                  "(step_N, with its tensors)")
        self.verify(path)
        self._check_fits(path, tensor_state)
        self.load_tensors(path, tensor_state)

    @staticmethod
    def load_tensors(path: Path, tensor_state) -> None:
        """Restore the tensors ``tensor_state.state_dict()`` asks for (a subset is fine)."""
        try:
            with _single_process_ok():
                dcp.load({"app": tensor_state}, checkpoint_id=str(path / TENSORS))
        except (Exception, CheckpointException) as exc:  # the latter is a BaseException
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"cannot load {path / TENSORS}: {first}") from exc


def model_mismatches(path: Path, wanted: dict[str, tuple]) -> list[str]:
    """``name: checkpoint shape vs model shape`` for each parameter of ``wanted`` (DCP key ->
    full shape) that the checkpoint at ``path`` lacks or holds with another shape."""
    try:
        saved = dcp.FileSystemReader(str(path / TENSORS)).read_metadata().state_dict_metadata
    except Exception as exc:  # a verified checkpoint always has metadata; say what broke
        raise CheckpointError(f"cannot read {path / TENSORS}/.metadata ({exc})") from None
    problems = []
    for key, shape in wanted.items():
        name = key.removeprefix("app.model.")
        if key not in saved:
            problems.append(f"{name} missing from the checkpoint")
        elif tuple(saved[key].size) != shape:
            problems.append(f"{name} {list(saved[key].size)} vs model {list(shape)}")
    return problems


def _read_pointer(pointer: Path) -> str | None:
    """The directory name ``latest`` holds, or None when it is missing or unreadable."""
    try:
        return pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
