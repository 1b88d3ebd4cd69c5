"""``python -m triforge.launcher.torchrun [torchrun options] -m triforge.launcher.train ...``:
torchrun that exits with its workers' status.

torchrun reports any worker's non-zero exit as its own failure, status 1 with a traceback of
its own. A SLURM batch script must tell the cases apart: 75 means every process committed
the preemption checkpoint (requeue the job), 2 means bad input (do not). This runs torchrun
unchanged and, when its workers fail, prints one line and exits with their shared status:

- 75 when the workers that exited by themselves all exited 75 (a worker the agent stopped
  while the others were leaving died of a signal and does not count);
- 2 when one exited 2 (bad input) and none for another reason;
- 1 otherwise, with the failures listed.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from .signals import EXIT_PREEMPTED


def workers_status(exit_codes: list[int]) -> int:
    """The status that stands for the failed workers' ``exit_codes`` (negative: a signal)."""
    own = {code for code in exit_codes if code > 0}
    if own == {EXIT_PREEMPTED}:
        return EXIT_PREEMPTED
    if own == {2}:
        return 2
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        status = workers_status([failure.exitcode for _, failure in failures])
        listed = ", ".join(f"rank {rank}: {failure.exitcode}" for rank, failure in failures)
        print(f"torchrun: workers exited ({listed}); exiting {status}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
