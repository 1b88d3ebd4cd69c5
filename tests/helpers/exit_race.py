"""Two ranks that end right after a collective whose tensor only gloo's worker still holds.

Run under torchrun with one argument, how the process ends: ``return`` (plain interpreter
exit, the way that aborts), ``exit_process`` or ``leave`` (triforge's tear-down). A huge
switch interval keeps the GIL on the main thread until it blocks, and the last collective is
still running when the main thread ends, so the worker that must release its tensor is
likely to want the GIL while Python finalizes: the race that a loaded machine hits by
chance in a few runs of a hundred, here in most runs.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from triforge.launcher.dist import exit_process, leave_distributed


def main(mode: str) -> int:
    dist.init_process_group("gloo")
    kept = dist.new_group(backend="gloo")  # held to the end, as device meshes hold theirs
    sys.setswitchinterval(30.0)
    for _ in range(20):
        dist.all_reduce(torch.ones(1024), group=kept)
    # Still running when this thread ends: only gloo's worker holds the work and its tensor.
    dist.all_reduce(torch.ones(1 << 20), group=kept, async_op=True)
    if mode == "exit_process":
        exit_process(0)
    if mode == "leave":
        return leave_distributed(0, all_ranks_done=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
