"""``triforge-layout world_size=N [parallel.* overrides]``: who talks to whom, before launch.

Prints, as JSON, the rank groups of every mesh dimension and of every role mesh (dp, fsdp,
loss, ep, expert_fsdp; see parallel/dims.py) for the given world size (ranks in one inner
list form one process group), without starting any process.
"""

from __future__ import annotations

import json
import sys

from triforge.errors import ConfigError, TriforgeError
from triforge.parallel import ParallelDims

from .config import load_config


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sizes = [a.split("=", 1)[1] for a in args if a.startswith("world_size=")]
    rest = [a for a in args if not a.startswith("world_size=")]
    try:
        if len(sizes) != 1 or not sizes[0].isdigit() or int(sizes[0]) < 1:
            raise ConfigError("give the number of processes once, e.g. world_size=8")
        job = load_config(rest)
        try:
            dims = ParallelDims.from_config(job.parallel, int(sizes[0]))
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None
    except TriforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(dims.rank_groups()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
