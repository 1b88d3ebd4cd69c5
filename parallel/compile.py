"""``torch.compile`` per block (torchtitan's choice): each transformer block is compiled on
its own, in place (``nn.Module.compile``, so parameter names and checkpoints do not
change), after tensor parallelism and activation checkpointing and before FSDP wraps it.

Per block rather than the whole model: the blocks are identical, so one compiled graph
serves them all (after the first, the others hit the cache), compile time does not grow
with depth, and FSDP's per-block gathers and the pipeline's stage split stay outside the
graphs. ``fullgraph=True``: a graph break inside a block is a bug to fix, not a silent
slowdown.
"""

from __future__ import annotations

from torch import nn


def apply_compile(model: nn.Module) -> None:
    """Compile every block of ``model.layers`` in place (lazily: on its first forward)."""
    for block in model.layers.values():
        block.compile(fullgraph=True)
