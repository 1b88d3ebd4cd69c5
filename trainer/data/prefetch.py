"""Read the next batch's windows in a background thread while the step computes.

``Prefetcher`` wraps a ``BatchSource``: each ``next_batch`` hands out the batch fetched
during the previous step and starts fetching the next one, with the same arguments. The
cursor a checkpoint saves must be that of the batches handed out, not of the one in flight,
so the state is snapshotted when a batch is handed out, before the next fetch starts; a
resume (``load_state_dict``) first waits for and drops the fetch in flight. On a GPU the
windows are pinned, so their copy to the device can overlap.

Each fetch runs on a daemon thread of its own. A pool's worker thread is not a daemon and
waits for work until its pool is shut down or collected: a multi-process run ends in
``launcher.dist.exit_process``, which joins every non-daemon thread before the ``atexit``
handlers run, so such a worker made finished runs hang at exit whenever the trainer had not
been garbage-collected yet (seen as 600 s timeouts in the reshard tests; gdb showed the
main thread in ``exit_process``'s ``join``).
"""

from __future__ import annotations

import threading

import torch

from .loader import BatchSource, TokenWindows


class _Fetch:
    """One batch being read on a daemon thread."""

    def __init__(self, fetch, args: tuple):
        self._done = threading.Event()
        self._batch: TokenWindows | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(fetch, args), daemon=True,
                         name="triforge-data").start()

    def _run(self, fetch, args: tuple) -> None:
        try:
            self._batch = fetch(*args)
        except BaseException as exc:  # handed to the step that needs the batch
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> TokenWindows:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._batch


class Prefetcher:
    def __init__(self, source: BatchSource, *, pin_memory: bool = False):
        self.source, self.pin_memory = source, pin_memory
        self._pending: _Fetch | None = None
        self._args: tuple | None = None
        self._state: dict | None = None  # the cursor after the batches handed out

    def next_batch(self, global_batch: int, *, dp_rank: int = 0, dp_size: int = 1
                   ) -> TokenWindows:
        args = (global_batch, dp_rank, dp_size)
        if self._pending is not None and self._args == args:
            batch = self._pending.result()
        else:
            self._drop_pending()
            batch = self._fetch(*args)
        self._state, self._args = self.source.state_dict(), args
        self._pending = _Fetch(self._fetch, args)
        return batch

    def _fetch(self, global_batch: int, dp_rank: int, dp_size: int) -> TokenWindows:
        batch = self.source.next_batch(global_batch, dp_rank=dp_rank, dp_size=dp_size)
        if self.pin_memory:
            batch.tokens = batch.tokens.pin_memory()
        return batch

    def _drop_pending(self) -> None:
        if self._pending is not None:
            try:  # let it finish (it moves the source's cursor), then drop it
                self._pending.result()
            except Exception:  # noqa: BLE001 (a batch nobody will use; the cursor is reset)
                pass
            self._pending = None
            if self._state is not None:
                self.source.load_state_dict(self._state)

    def state_dict(self) -> dict:
        return self._state if self._pending is not None else self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._drop_pending()
        self.source.load_state_dict(state)
        self._state = None


def maybe_prefetch(source: BatchSource, *, enabled: bool, device: torch.device) -> BatchSource:
    return Prefetcher(source, pin_memory=device.type == "cuda") if enabled else source
