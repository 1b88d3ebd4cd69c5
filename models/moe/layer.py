"""The mixture-of-experts feed-forward: route, run the experts on their rows, combine.

``out = sum_j gate_j * expert_j(x) (+ shared(x))`` per token, over the token's kept
assignments. The balance and z losses are attached to the output as auxiliary losses
(models/side_outputs.py) with the block's per-step factor, so they reach the gradient on
whatever pipeline stage or shard computed them.

Routing statistics are kept per forward pass of the current step (``records``: counts per
expert, then ``TOTALS``), which the trainer clears at each step start and reads after the
optimizer step as the sum of the step's last ``microbatches`` passes
(``step_statistics``; trainer/moe_balance.py). Only training passes are recorded: not
evaluation (no gradient) and not activation checkpointing's recompute (it runs inside
backward), so a step's counts are the same with and without checkpointing. Taking the last
passes, not all, leaves out the extra forward that torch's pipeline stages run before the
real micro-batches on a step where they infer shapes (the first, and the first after an
evaluation).
"""

from __future__ import annotations

import torch
from torch import nn

from triforge.kernels.moe_routing import combine, permute

from ..config import ModelConfig
from ..side_outputs import BlockControls, attach_aux_loss
from .experts import GroupedExperts
from .router import Routing, build_router

# totals: assignments chosen, assignments dropped, balance-loss sum, z-loss sum, micro-batches
TOTALS = ("assigned", "dropped", "balance_loss", "z_loss", "micro_batches")


def _counting(module: nn.Module) -> bool:
    in_backward = torch._C._current_graph_task_id() != -1  # checkpoint recompute runs here
    return module.training and torch.is_grad_enabled() and not in_backward


class MoEFeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig, controls: BlockControls, *, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        from ..feed_forward import FeedForward  # the dense SwiGLU, for the shared experts

        moe = cfg.moe
        hidden = moe.expert_hidden or cfg.hidden_dim
        self.controls = controls  # the block's: aux-loss factor of the step
        self.coeffs = (moe.router.aux_loss_coeff, moe.router.z_loss_coeff)
        self.router = build_router(cfg.d_model, moe.num_experts, moe.top_k, moe.router)
        self.experts = GroupedExperts(moe.num_experts, cfg.d_model, hidden,
                                      grouped_mm=moe.grouped_mm)
        self.shared = (FeedForward(cfg, hidden=hidden * moe.shared_experts)
                       if moe.shared_experts else None)
        self.records: list[torch.Tensor] = []  # plain attribute: not state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        flat = x.reshape(b * s, d)
        routing = self.router(flat, seq_len=s)
        if routing.slot is not None:  # token choice: the routing kernels (or reference)
            rows = permute(flat, routing.slot, int(routing.counts.sum()))
            y = self.experts(rows, routing.counts)
            combined = combine(y, routing.slot_gates, routing.slot)
        else:
            # index_select, not flat[token]: its backward (index_add) sums a token's
            # gradients in a fixed order on CPU, where indexing's backward does not.
            y = self.experts(torch.index_select(flat, 0, routing.token), routing.counts)
            combined = torch.zeros(flat.shape, dtype=torch.float32, device=x.device)
            combined = combined.index_add(0, routing.token, y.float() * routing.gate[:, None])
        out = combined.to(x.dtype)
        if self.shared is not None:
            out = out + self.shared(flat)
        aux = self.coeffs[0] * routing.balance + self.coeffs[1] * routing.z
        if aux.requires_grad and torch.is_grad_enabled():
            out = attach_aux_loss(out, aux, self.controls.aux_loss_scale)
        if _counting(self):
            self._record(routing)
        return out.view(b, s, d)

    @torch.no_grad()
    def _record(self, routing: Routing) -> None:
        totals = torch.stack([routing.routed.sum(), routing.dropped]).float()
        self.records.append(torch.cat([routing.routed.float(), totals, routing.balance.view(1),
                                       routing.z.view(1), totals.new_ones(1)]))

    def reset_statistics(self) -> None:
        self.records.clear()

    def step_statistics(self, microbatches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(counts per expert, ``TOTALS``) summed over the step's last ``microbatches``
        recorded passes; zeros when the block did not run (layer dropping)."""
        n = self.router.num_experts
        if not self.records:
            device = self.router.gate.weight.device
            return torch.zeros(n, device=device), torch.zeros(len(TOTALS), device=device)
        summed = torch.stack(self.records[-microbatches:]).sum(dim=0)
        return summed[:n], summed[n:]

    def router_bias_norm_sq(self) -> torch.Tensor:
        bias = getattr(self.router, "expert_bias", None)
        if bias is None:
            return torch.zeros((), device=self.router.gate.weight.device)
        return bias.pow(2).sum()

    def init_weights(self, std: float, out_std: float) -> None:
        nn.init.trunc_normal_(self.router.gate.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        self.experts.init_weights(std, out_std)
        if self.shared is not None:
            self.shared.init_weights(std, out_std)
        if hasattr(self.router, "expert_bias"):
            self.router.expert_bias.zero_()
