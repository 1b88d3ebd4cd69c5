"""Preemption notice: SIGTERM, or SIGUSR1 as SLURM sends it before a time limit or
preemption with ``sbatch --signal=USR1@SECONDS``.

The handler only records the signal; the trainer acts on it at the next step boundary, after
all ranks agree, so every rank saves the same step and no collective is interrupted. The
process then exits with ``EXIT_PREEMPTED`` (75, EX_TEMPFAIL: "try again later"), which a
requeue script can tell apart from success (0) and from errors (1, 2).
"""

from __future__ import annotations

import signal
import time

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 75


class SignalWatch:
    """Records the first preemption signal: ``received`` (its name) and ``at`` (monotonic
    time), read by the trainer at step boundaries."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.at: float | None = None
        self._previous: dict = {}

    def install(self) -> SignalWatch:
        """Take over the preemption signals (main thread only); ``restore`` gives them back."""
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            self.at = time.monotonic()
