"""Data parallelism with FSDP2 (``fully_shard``): ZeRO-3 sharding, replication, or both.

One mechanism covers the three data-parallel modes, so they compose with tensor and
pipeline parallelism the same way:
- ``dp_shard`` > 1: parameters, gradients and optimizer state sharded (ZeRO-3);
- ``dp_replicate`` > 1 alone: a (replicate, shard=1) mesh, i.e. full replicas whose
  gradients are all-reduced, as DDP does, but also over DTensor (tensor-parallel) params;
- both: HSDP, sharded within a group and replicated across groups.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from .expert_parallel import expert_modules, expert_params


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, *, reshard_after_forward: bool,
               mp_policy: MixedPrecisionPolicy | None = None,
               expert_mesh: DeviceMesh | None = None) -> None:
    """Wrap each block, then the root, over ``dp_mesh`` (1-D shard or 2-D replicate x shard).

    Per-block wrapping lets FSDP gather one block's parameters at a time. The root keeps
    embedding, final norm and head; ``reshard_after_forward`` (ZeRO-3) frees gathered block
    parameters after forward at the cost of gathering them again for backward. ``mp_policy``
    sets the dtypes of gathered parameters and of gradient reductions (default: fp32).
    """
    mp_policy = mp_policy or MixedPrecisionPolicy()
    for block in model.layers.values():
        if expert_mesh is not None and expert_mesh.size() > 1:
            # Expert-parallel weights get an FSDP unit of their own over what ep leaves of
            # dp_shard; the block's unit then skips them.
            for experts in expert_modules(block):
                fully_shard(experts, mesh=expert_mesh,
                            reshard_after_forward=reshard_after_forward, mp_policy=mp_policy)
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard_after_forward,
                    mp_policy=mp_policy, ignored_params=expert_params(block) or None)
    # The root's parameters are needed again right at the start of backward: keep them.
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=False, mp_policy=mp_policy,
                ignored_params=expert_params(model) or None)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Reduce gradients over data-parallel ranks in this backward pass, or only accumulate
    them locally (gradient accumulation: only the last microbatch needs the reduction)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
