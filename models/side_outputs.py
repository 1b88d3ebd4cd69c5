"""How values other than the logits get from inside the model to the loss: the contract
every layout (FSDP, TP, all pipeline schedules) honours without module globals.

Auxiliary losses (MoE load balance and z-loss, or any penalty on activations) never travel
to the loss function, which under pipeline parallelism only sees the last stage. Instead
the module that computes one attaches it to an activation it returns:
``x = attach_aux_loss(x, aux, scale)`` is the identity on ``x`` in forward; in backward it
also gives ``aux`` the gradient ``scale``, so ``aux``'s gradient enters the graph right
where it was computed, on whatever stage or shard that is (Megatron-Core's approach).

``aux`` is a scalar per microbatch; its weight in the objective is its coefficient times its
mean over all microbatches of the global batch, and ``scale`` makes that so: the step runner
sets it on every block before each step (``BlockControls.aux_loss_scale``, see
trainer/runner.py ``aux_loss_scale``), from fp16's loss scale and the rank's microbatch
count, consistently with how the main loss is normalized.

Statistics (tokens per expert, router entropy) are not losses: a module keeps them in
buffers of its own and the trainer reads them at the step boundary through its hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BlockControls:
    """Per-step settings the trainer gives each block before a forward (see
    ``Transformer.blocks_controls``): ``keep`` False skips the block (identity, no compute);
    ``residual_scale`` multiplies both residual branches; ``aux_loss_scale`` is the backward
    factor of auxiliary losses attached inside the block. The defaults are a plain forward."""

    keep: bool = True
    residual_scale: float = 1.0
    aux_loss_scale: float = 1.0


class _AttachAuxLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        ctx.aux_meta = (aux.shape, aux.dtype, aux.device)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor):
        shape, dtype, device = ctx.aux_meta
        return grad_x, torch.full(shape, ctx.scale, dtype=dtype, device=device), None


def attach_aux_loss(x: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged; backward through it also backpropagates ``aux * scale``."""
    return _AttachAuxLoss.apply(x, aux, scale)
