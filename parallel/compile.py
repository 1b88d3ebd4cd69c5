"""``torch.compile`` per block (torchtitan's choice): each transformer block is compiled on
its own, in place (``nn.Module.compile``, so parameter names and checkpoints do not
change), after tensor parallelism and before activation checkpointing and FSDP wrap it.

Compiled inside the checkpoint rather than around it: the checkpoint wrapper discards the
compiled graph's saved activations and recomputes the compiled forward in backward (saved
bytes identical to eager checkpointing, tests/unit/test_model.py). Compiling through the
checkpoint instead fails under tensor parallelism in torch 2.13 (a ``DeviceMesh`` among the
values the checkpoint saves).

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
