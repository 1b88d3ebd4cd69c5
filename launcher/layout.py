"""``triforge-layout world_size=N [parallel.* overrides]``: who talks to whom, before launch.

Prints, as JSON, the rank groups of every mesh dimension for the given world size (ranks in
one inner list form one process group), without starting any process.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from triforge.errors import ConfigError, TriforgeError
from triforge.parallel import ParallelDims

from .config import load_config


def rank_groups(dims: ParallelDims) -> dict[str, list[list[int]]]:
    """Groups per mesh dimension (and the flattened ``dp``), in the mesh's rank order."""
    shape = dims.mesh_shape()
    grid = np.arange(dims.world_size).reshape(tuple(shape.values()))
    groups = {}
    for axis, (name, size) in enumerate(shape.items()):
        groups[name] = np.moveaxis(grid, axis, -1).reshape(-1, size).tolist()
    dp = np.moveaxis(grid, (1, 2), (-2, -1)).reshape(-1, dims.dp)  # replicate x shard
    groups["dp"] = dp.tolist()
    return groups


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
    print(json.dumps(rank_groups(dims)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
