"""Expert parallelism: each rank of the expert mesh holds ``E / ep`` of every MoE layer's
experts, and token rows travel to the rank of their expert and back by all-to-all.

``apply_ep`` replaces each MoE layer's ``experts`` with ``ExpertParallelExperts``, whose
stacked weights are DTensors sharded along the expert dimension (``Shard(0)``) over the
expert mesh: checkpoints hold the full (E, ...) tensors and reshard to any ep, as every other
parameter does. Its forward, for this rank's rows grouped by expert with their counts:

1. the counts per destination rank are exchanged (all-to-all of the E counts), so every rank
   knows how many rows it receives from each source for each of its experts;
2. rows go to their expert's rank (``all_to_all_single_autograd``, uneven and empty splits
   allowed, with its backward), are regrouped by local expert, run through the local experts'
   grouped matmul, and return the same way.

Composition with FSDP: ep takes a factor of dp_shard; what is left (the ``expert_fsdp``
mesh) shards each rank's experts further, in an FSDP unit of their own
(parallel/data_parallel.py); with nothing left, FSDP over the dense mesh ignores them
(``expert_params``). Under pipeline parallelism each stage's MoE layers use the expert mesh
of that stage's ranks. Replication and tensor parallelism with ep are refused so far.

Gradients: an expert's weights see the tokens of every rank of the expert group, so their
gradient is the sum over the ep ranks (then the mean over expert_fsdp, by FSDP), where a
data-parallel parameter gets the mean over all dp = ep x expert_fsdp ranks. The expert
weights' gradients are therefore scaled by 1/ep in backward, explicitly (gloo has no
PREMUL_SUM for FSDP's gradient divide factor).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard, distribute_tensor

from triforge.models.moe.experts import GroupedExperts, expert_mlp
from triforge.models.moe.layer import MoEFeedForward


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


class ExpertParallelExperts(nn.Module):
    """The experts of one MoE layer, sharded over ``mesh`` (same parameter names as
    ``GroupedExperts``)."""

    def __init__(self, experts: GroupedExperts, mesh: DeviceMesh):
        super().__init__()
        self.mesh, self.grouped_mm = mesh, experts.grouped_mm
        for name in ("w1", "w3", "w2"):
            full = getattr(experts, name)
            setattr(self, name, nn.Parameter(distribute_tensor(full.data, mesh, [Shard(0)])))
        self.ep = mesh.size()
        self.local_experts = experts.w1.shape[0] // self.ep

    def forward(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """rows (A, d) grouped by expert over all E experts, counts (E,) -> (A, d)."""
        group, ep, n_local = self.mesh.get_group(), self.ep, self.local_experts
        received_counts = torch.empty_like(counts)
        dist.all_to_all_single(received_counts, counts, group=group)  # (source, local expert)
        send = counts.view(ep, n_local).sum(dim=1).tolist()
        recv_grid = received_counts.view(ep, n_local)
        recv = recv_grid.sum(dim=1).tolist()
        arrived = all_to_all_single_autograd(rows, recv, send, group)  # by source, then expert
        order = _expert_major(recv_grid)
        local = torch.index_select(arrived, 0, order)
        # In the rows' dtype: FSDP's mixed-precision policy does not cast weights it does
        # not hold (ep = dp_shard), so the layer does, as FSDP would (gradients stay fp32).
        weights = [_ScaleGrad.apply(getattr(self, n).to_local().to(rows.dtype), 1.0 / ep)
                   for n in ("w1", "w3", "w2")]
        out = expert_mlp(local, recv_grid.sum(dim=0), *weights, grouped_mm=self.grouped_mm)
        back = torch.index_select(out, 0, torch.argsort(order))  # source-major again
        return all_to_all_single_autograd(back, send, recv, group)


def _expert_major(grid: torch.Tensor) -> torch.Tensor:
    """The permutation that turns rows ordered (source, expert) with ``grid[s, e]`` rows per
    block into (expert, source) order, sources ascending within each expert."""
    n_sources, n_experts = grid.shape
    block = torch.arange(n_sources * n_experts, device=grid.device)
    block_of_row = torch.repeat_interleave(block, grid.reshape(-1))
    key = (block_of_row % n_experts) * n_sources + block_of_row // n_experts
    return torch.argsort(key, stable=True)


def apply_ep(model: nn.Module, ep_mesh: DeviceMesh) -> None:
    """Shard every MoE layer's experts over ``ep_mesh`` (in place, before FSDP)."""
    n = ep_mesh.size()
    for module in model.modules():
        if isinstance(module, MoEFeedForward):
            if module.experts.w1.shape[0] % n:
                raise ValueError(f"parallel.ep({n}) must divide model.moe.num_experts"
                                 f"({module.experts.w1.shape[0]})")
            module.experts = ExpertParallelExperts(module.experts, ep_mesh)


def expert_modules(module: nn.Module) -> list[ExpertParallelExperts]:
    return [m for m in module.modules() if isinstance(m, ExpertParallelExperts)]


def expert_params(module: nn.Module) -> set[nn.Parameter]:
    """The expert-parallel parameters under ``module`` that no FSDP unit of their own holds
    (with nothing left of dp_shard for them): FSDP over the dense mesh must not take them."""
    from torch.distributed.fsdp import FSDPModule

    return {p for m in expert_modules(module) if not isinstance(m, FSDPModule)
            for p in m.parameters()}
