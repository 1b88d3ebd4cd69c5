"""Activation checkpointing: recompute a block's activations in backward instead of storing
them, trading compute for memory.

``full`` wraps every block; ``selective`` every ``every``-th one (layer index divisible by
it), so memory and recompute cost can be traded off in between. Applied after tensor
parallelism and before FSDP (the order torchtitan uses): the checkpointed region then
contains the block's own collectives, and FSDP wraps the checkpointed block.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

AC_MODES = ("none", "full", "selective")


def apply_ac(model: nn.Module, *, mode: str, every: int) -> None:
    """Wrap the chosen blocks of ``model.layers`` in place. The wrapper's state-dict hooks
    drop its name prefix, so checkpoints keep the plain ``layers.N.*`` names."""
    if mode not in AC_MODES:
        raise ValueError(f"parallel.activation_checkpoint='{mode}' is not one of {AC_MODES}")
    if mode == "none":
        return
    for key, block in list(model.layers.items()):
        if mode == "full" or int(key) % every == 0:
            # No RNG state to preserve: the blocks have no dropout.
            model.layers[key] = checkpoint_wrapper(block, preserve_rng_state=False)


def saved_activation_bytes(forward, exclude=()) -> int:
    """Bytes of the tensors autograd keeps for backward while ``forward()`` runs: the
    activation memory that checkpointing trades for recompute. Each storage counts once
    (views of one buffer share it); parameters are not activations and are left out, and
    so are the storages of ``exclude`` (pass the model's parameters: a linear layer saves
    its weight as a transposed view, which is not an ``nn.Parameter``)."""
    seen: set[int] = {t.untyped_storage().data_ptr() for t in exclude}
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        if not isinstance(t, nn.Parameter):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return total
