"""Allocate a parallelized meta-device model and give it the single-process initial weights.

Random initialization of sharded parameters would depend on the layout (each rank draws its
own shard). Instead rank 0 initializes the full model from the seed exactly as a single
process would and the values are broadcast into every rank's shards, so every layout starts
from the same weights and losses can be compared step for step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict


def materialize_sharded(
    model: nn.Module, device: torch.device, *, is_main: bool,
    full_init: Callable[[], nn.Module],
) -> nn.Module:
    """``to_empty`` + load ``full_init()``'s weights (built on the main rank only)."""
    model.to_empty(device=device)
    model.tie_weights()  # to_empty re-creates each registration of a tied parameter
    model.init_buffers()
    full_sd = full_init().state_dict() if is_main else {}
    set_model_state_dict(
        model, full_sd,
        # strict=False: a pipeline stage holds only some of the full model's parameters.
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False),
    )
    return model
