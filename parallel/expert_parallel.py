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
of that stage's ranks. Replication (dp_replicate) with ep is refused so far.

Tensor parallelism: the expert group spans the tp ranks (parallel/dims.py), which all hold
the same routed rows (the MoE layer routes the whole micro-batch on every tp rank,
parallel/tensor_parallel.py). Each tp rank takes a contiguous 1/tp share of those rows
before the all-to-all and the experts' outputs are all-gathered over tp afterwards, so no
expert work is repeated and everything outside the experts stays identical on the tp ranks.
The pair is Megatron's scatter/gather to the tensor-parallel region: the share's backward
all-gathers the gradients, the gather's backward keeps the share's, so the rows' gradient is
whole on every tp rank, as the router's is.

Gradients: an expert's weights see the tokens of every rank of the expert group, so their
gradient is the sum over the group's ranks (then the mean over expert_fsdp, by FSDP), where a
data-parallel parameter gets the mean over the dp ranks. The group covers ep / tp
data-parallel ranks (tp ranks share one loss, their rows are disjoint shares of it), so the
expert weights' gradients are scaled by tp / ep in backward, explicitly (gloo has no
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
from triforge.models.moe.router import TokenChoiceRouter


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
    ``GroupedExperts``); ``tp_mesh``: the tp ranks within ``mesh`` that hold the same rows."""

    def __init__(self, experts: GroupedExperts, mesh: DeviceMesh, *,
                 tp_mesh: DeviceMesh | None = None):
        super().__init__()
        self.mesh, self.tp_mesh, self.grouped_mm = mesh, tp_mesh, experts.grouped_mm
        for name in ("w1", "w3", "w2"):
            full = getattr(experts, name)
            setattr(self, name, nn.Parameter(distribute_tensor(full.data, mesh, [Shard(0)])))
        self.ep = mesh.size()
        self.local_experts = experts.w1.shape[0] // self.ep
        tp = tp_mesh.size() if tp_mesh is not None else 1
        self.grad_scale = tp / self.ep

    def forward(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """rows (A, d) grouped by expert over all E experts, counts (E,) -> (A, d)."""
        if self.tp_mesh is None:
            return self._dispatch(rows, counts)
        share = RowShare(self.tp_mesh, rows.shape[0])
        mine = _TakeShare.apply(rows, share)
        return _GatherShares.apply(self._dispatch(mine, share.counts(counts)), share)

    def _dispatch(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
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
        weights = [_ScaleGrad.apply(getattr(self, n).to_local().to(rows.dtype), self.grad_scale)
                   for n in ("w1", "w3", "w2")]
        out = expert_mlp(local, recv_grid.sum(dim=0), *weights, grouped_mm=self.grouped_mm)
        back = torch.index_select(out, 0, torch.argsort(order))  # source-major again
        return all_to_all_single_autograd(back, send, recv, group)


class RowShare:
    """This tp rank's contiguous share ``[lo, hi)`` of ``total`` rows (``chunk`` rows per
    rank, the last ones shorter)."""

    def __init__(self, tp_mesh: DeviceMesh, total: int):
        self.group, self.size, self.total = tp_mesh.get_group(), tp_mesh.size(), total
        self.chunk = -(-total // self.size)
        self.lo = min(total, tp_mesh.get_local_rank() * self.chunk)
        self.hi = min(total, self.lo + self.chunk)

    def counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Rows per expert within the share, for rows grouped by expert with ``counts``."""
        ends = torch.cumsum(counts, 0)
        return (ends.clamp(max=self.hi) - (ends - counts).clamp(min=self.lo)).clamp(min=0)

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """Every rank's share, concatenated in rank order: (total, ...)."""
        padded = part.new_zeros((self.chunk, *part.shape[1:]))
        padded[:part.shape[0]] = part
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        sizes = [min(self.chunk, max(0, self.total - r * self.chunk)) for r in range(self.size)]
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


class _TakeShare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor, share: RowShare) -> torch.Tensor:
        ctx.share = share
        return rows[share.lo:share.hi].clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.share.gather(grad.contiguous()), None


class _GatherShares(torch.autograd.Function):
    @staticmethod
    def forward(ctx, part: torch.Tensor, share: RowShare) -> torch.Tensor:
        ctx.share = share
        return share.gather(part)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.share.lo:ctx.share.hi].clone(), None


def _expert_major(grid: torch.Tensor) -> torch.Tensor:
    """The permutation that turns rows ordered (source, expert) with ``grid[s, e]`` rows per
    block into (expert, source) order, sources ascending within each expert."""
    n_sources, n_experts = grid.shape
    block = torch.arange(n_sources * n_experts, device=grid.device)
    block_of_row = torch.repeat_interleave(block, grid.reshape(-1))
    key = (block_of_row % n_experts) * n_sources + block_of_row // n_experts
    return torch.argsort(key, stable=True)


def apply_ep(model: nn.Module, ep_mesh: DeviceMesh, *, tp_mesh: DeviceMesh | None = None
             ) -> None:
    """Shard every MoE layer's experts over ``ep_mesh`` (in place, after TP and before
    FSDP); ``tp_mesh``: with tensor parallelism, the tp ranks within each expert group."""
    n = ep_mesh.size()
    for module in model.modules():
        if isinstance(module, MoEFeedForward):
            if module.experts.w1.shape[0] % n:
                raise ValueError(f"parallel.ep({n}) must divide model.moe.num_experts"
                                 f"({module.experts.w1.shape[0]})")
            module.experts = ExpertParallelExperts(module.experts, ep_mesh, tp_mesh=tp_mesh)


def expert_modules(module: nn.Module) -> list[ExpertParallelExperts]:
    return [m for m in module.modules() if isinstance(m, ExpertParallelExperts)]


def expert_params(module: nn.Module) -> set[nn.Parameter]:
    """The expert-parallel parameters under ``module`` that no FSDP unit of their own holds
    (with nothing left of dp_shard for them): FSDP over the dense mesh must not take them."""
    from torch.distributed.fsdp import FSDPModule

    return {p for m in expert_modules(module) if not isinstance(m, FSDPModule)
            for p in m.parameters()}


class SumOverMesh:
    """A ``CountReducer`` (models/moe/router.py): the sum over the ranks of ``mesh``."""

    def __init__(self, mesh: DeviceMesh):
        self.group = mesh.get_group()

    def __call__(self, counts: torch.Tensor) -> torch.Tensor:
        summed = counts.detach().clone()
        dist.all_reduce(summed, group=self.group)
        return summed


def apply_global_balance(model: nn.Module, loss_mesh: DeviceMesh) -> None:
    """Routers with ``aux_loss_scope=global`` sum their counts over ``loss_mesh`` (dp x cp:
    the ranks whose micro-batches make up the global one). One all-reduce of E numbers per
    MoE layer and forward; every rank runs the same forwards in the same order (activation
    checkpointing's recompute included), so the collectives stay matched."""
    for module in model.modules():
        if isinstance(module, TokenChoiceRouter) and module.cfg.aux_loss_scope == "global":
            module.reduce_counts = SumOverMesh(loss_mesh)
