"""Routers: which experts each token's hidden state goes to, with what weight.

A router returns a ``Routing``: the kept (token, gate) assignments already in
expert-contiguous order with the count per expert, which is what the grouped matmul needs,
plus what balancing needs (assignments chosen per expert before any were dropped, the
balance loss and the z-loss). Scores are computed in fp32 whatever the compute dtype.

- ``TokenChoiceRouter``: each token takes its ``top_k`` experts by score (softmax over
  experts or a sigmoid each). With a capacity, an expert over it keeps its highest gates
  (``drop_policy=probability``) or its earliest tokens (``position``); a dropped assignment
  adds nothing, the token keeps its residual. An expert bias (auxiliary-loss-free
  balancing) shifts the choice only; gates come from the unbiased scores. The balance loss
  is per micro-batch, per sequence, or global: counts summed over the data-parallel ranks
  in forward (``reduce_counts``, installed by the layout), so a rank's micro-batch is
  balanced as part of all ranks' (a micro-batch of one domain need not be balanced alone).
- ``ExpertChoiceRouter``: each expert takes its ``capacity`` highest-scoring tokens of the
  micro-batch (Zhou et al. 2022): balanced by construction, but a token's experts depend on
  the other tokens of the micro-batch, later positions included. Under causal LM that lets
  information from future tokens into training; the results also depend on how tokens are
  grouped into micro-batches (in every layout triforge keeps micro-batches the same, so
  parity holds) and at generation on the batch. Use it knowing that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from triforge.kernels.moe_routing import gating
from triforge.kernels.moe_routing.reference import router_scores, top_indices

from .config import RouterConfig


@dataclass
class Routing:
    token: torch.Tensor  # (A,) int64: the token of each kept assignment, grouped by expert
    gate: torch.Tensor  # (A,) fp32: its weight in the combine
    counts: torch.Tensor  # (E,) int64: kept assignments per expert (the group sizes)
    routed: torch.Tensor  # (E,) int64: assignments chosen per expert before capacity
    balance: torch.Tensor  # () fp32: the Switch balance loss (0 where not used)
    z: torch.Tensor  # () fp32: mean(logsumexp(logits)^2)
    dropped: torch.Tensor  # () int64: dropped assignments (expert choice: unrouted tokens)
    # Token choice also gives the (T, k) form the routing kernels take: each assignment's
    # row in the grouped order (-1: dropped) and its gate.
    slot: torch.Tensor | None = None
    slot_gates: torch.Tensor | None = None


def capacity(cfg: RouterConfig, *, tokens: int, top_k: int, num_experts: int) -> int:
    """Assignments an expert may take in a micro-batch of ``tokens`` (0: no limit)."""
    if cfg.capacity_factor <= 0:
        return 0
    return min(tokens, math.ceil(cfg.capacity_factor * tokens * top_k / num_experts))


class CountReducer(Protocol):
    """Sums a per-expert count vector over the ranks that share a global batch (set from
    outside by the layout, parallel/expert_parallel.py; None in one process)."""

    def __call__(self, counts: torch.Tensor) -> torch.Tensor: ...


def balance_loss(probs: torch.Tensor, top: torch.Tensor, *, seq_len: int, scope: str,
                 reduce_counts: CountReducer | None = None) -> torch.Tensor:
    """Switch's E * sum_i f_i * P_i: f_i the share of assignments to expert i (no gradient),
    P_i the mean probability of i; 1 at perfect balance. ``probs`` (T, E) sum to 1 per
    token, ``top`` (T, k) the chosen experts; per micro-batch, per sequence (then meaned),
    or ``global``: f from the counts summed by ``reduce_counts`` over the data-parallel
    ranks, P this rank's. The gradient reduction then averages E * sum_i f_i * P_i over the
    ranks, which is the loss of the union of their micro-batches (equal token counts), with
    its exact gradient and no collective in backward."""
    n_tokens, n_experts = probs.shape
    groups = n_tokens // seq_len if scope == "sequence" else 1
    chosen = F.one_hot(top, n_experts).sum(dim=1).view(groups, -1, n_experts).float()
    counts = chosen.sum(dim=1)
    if scope == "global" and reduce_counts is not None:
        counts = reduce_counts(counts)
    share = counts / counts.sum(dim=-1, keepdim=True)
    mean_prob = probs.view(groups, -1, n_experts).mean(dim=1)
    return n_experts * (share * mean_prob).sum(dim=-1).mean()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def expert_order(expert: torch.Tensor, gate: torch.Tensor, *, num_experts: int, cap: int,
                 by_gate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of the kept assignments grouped by expert, kept count per expert). Within
    an expert the order is by gate (highest first) when ``by_gate``, else by position; an
    expert over ``cap`` (> 0) keeps the first ``cap`` of that order."""
    first = torch.argsort(gate, descending=True, stable=True) if by_gate else None
    keyed = expert if first is None else expert[first]
    order = torch.argsort(keyed, stable=True)
    order = order if first is None else first[order]
    counts = torch.bincount(expert, minlength=num_experts)
    if not cap:
        return order, counts
    starts = torch.cumsum(counts, 0) - counts
    rank_in_expert = torch.arange(order.numel(), device=order.device) - starts[expert[order]]
    return order[rank_in_expert < cap], counts.clamp(max=cap)


class RouterGate(nn.Module):
    """The router's linear map to one logit per expert, computed in fp32 (the same parameter
    name, ``gate.weight``, as an ``nn.Linear``). A module of its own so that a layout can
    replicate it (tensor parallelism makes it a replicated DTensor) without touching the
    routing around it."""

    def __init__(self, d_model: int, num_experts: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Linear's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight.float())


class TokenChoiceRouter(nn.Module):
    def __init__(self, d_model: int, num_experts: int, top_k: int, cfg: RouterConfig):
        super().__init__()
        self.cfg, self.num_experts, self.top_k = cfg, num_experts, top_k
        self.gate = RouterGate(d_model, num_experts)
        # Selection-only bias of auxiliary-loss-free balancing: state (checkpointed), not a
        # parameter; the trainer moves it after each optimizer step (trainer/moe_balance.py).
        self.register_buffer("expert_bias", torch.zeros(num_experts))
        self.reduce_counts: CountReducer | None = None  # plain attribute: not state

    def forward(self, x: torch.Tensor, *, seq_len: int) -> Routing:
        """x (T, d) of T = batch * seq_len tokens."""
        logits = self.gate(x)
        bias = self.expert_bias if self.cfg.bias_update_rate > 0 else None
        top, gates, probs = gating(logits, bias, top_k=self.top_k, score=self.cfg.score,
                                   renormalize=self.cfg.renormalize)  # (T, k), (T, k), (T, E)
        balance = balance_loss(probs, top, seq_len=seq_len, scope=self.cfg.aux_loss_scope,
                               reduce_counts=self.reduce_counts)
        expert, gate = top.reshape(-1), gates.reshape(-1)
        cap = capacity(self.cfg, tokens=x.shape[0], top_k=self.top_k,
                       num_experts=self.num_experts)
        order, counts = expert_order(expert, gate.detach(), num_experts=self.num_experts,
                                     cap=cap, by_gate=self.cfg.drop_policy == "probability")
        token = torch.arange(x.shape[0], device=x.device).repeat_interleave(self.top_k)
        slot = torch.full_like(expert, -1)
        slot[order] = torch.arange(order.numel(), device=x.device)
        return Routing(token=token[order], gate=gate[order], counts=counts,
                       routed=torch.bincount(expert, minlength=self.num_experts),
                       balance=balance, z=z_loss(logits),
                       dropped=torch.tensor(expert.numel() - order.numel(), device=x.device),
                       slot=slot.view_as(top), slot_gates=gates)


class ExpertChoiceRouter(nn.Module):
    def __init__(self, d_model: int, num_experts: int, top_k: int, cfg: RouterConfig):
        super().__init__()
        self.cfg, self.num_experts, self.top_k = cfg, num_experts, top_k
        self.gate = RouterGate(d_model, num_experts)

    def forward(self, x: torch.Tensor, *, seq_len: int) -> Routing:
        del seq_len  # the choice is over the whole micro-batch
        logits = self.gate(x)
        scores = router_scores(logits, self.cfg.score)
        cap = capacity(self.cfg, tokens=x.shape[0], top_k=self.top_k,
                       num_experts=self.num_experts)
        picked = top_indices(scores.t(), cap)  # (E, cap): each expert's best tokens
        token = picked.reshape(-1)
        served = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        served[token] = True
        counts = torch.full((self.num_experts,), cap, dtype=torch.int64, device=x.device)
        gate = scores.t().gather(-1, picked).reshape(-1)
        return Routing(token=token, gate=gate, counts=counts,
                       routed=counts.clone(), balance=logits.new_zeros(()), z=z_loss(logits),
                       dropped=(~served).sum())


def build_router(d_model: int, num_experts: int, top_k: int, cfg: RouterConfig) -> nn.Module:
    kind = TokenChoiceRouter if cfg.kind == "token_choice" else ExpertChoiceRouter
    return kind(d_model, num_experts, top_k, cfg)
