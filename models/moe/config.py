"""Mixture-of-experts hyperparameters: ``model.moe.*`` and ``model.moe.router.*``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ROUTERS = ("token_choice", "expert_choice")
SCORES = ("softmax", "sigmoid")
DROP_POLICIES = ("probability", "position")
AUX_SCOPES = ("micro_batch", "sequence", "global")


@dataclass
class RouterConfig:
    # token_choice: each token picks its top_k experts; expert_choice: each expert picks its
    # top tokens (Zhou et al. 2022; sees the whole micro-batch, see models/moe/router.py).
    kind: str = "token_choice"
    score: str = "softmax"  # softmax over the experts, or a sigmoid per expert
    # Gates renormalized over the chosen top_k (Mixtral, DeepSeek-V3), or the scores as they
    # are (pre-softmax top-k: Switch, DeepSeek-V2).
    renormalize: bool = True
    # Tokens each expert takes per micro-batch: capacity_factor * tokens * top_k / experts.
    # 0 is dropless (token choice only); expert choice needs a capacity.
    capacity_factor: float = 0.0
    drop_policy: str = "probability"  # over capacity: drop the lowest gates, or the latest
    aux_loss_coeff: float = 0.01  # Switch balance loss E * sum_i f_i * P_i (1 when balanced)
    # f and P over the micro-batch, or per sequence (then meaned), or global: f over the
    # micro-batches of all data-parallel ranks at once (the global batch when there is no
    # gradient accumulation; Qwen's global-batch balance), see models/moe/router.py.
    aux_loss_scope: str = "micro_batch"
    z_loss_coeff: float = 0.0  # router z-loss mean(logsumexp(logits)^2) (ST-MoE)
    # Auxiliary-loss-free balancing (DeepSeek-V3): a per-expert bias added to the scores for
    # the choice only, moved by bias_update_rate * sign(mean count - count) once per step.
    bias_update_rate: float = 0.0

    def validate(self, top_k: int, num_experts: int) -> None:
        for name, value, choices in (("kind", self.kind, ROUTERS), ("score", self.score, SCORES),
                                     ("drop_policy", self.drop_policy, DROP_POLICIES),
                                     ("aux_loss_scope", self.aux_loss_scope, AUX_SCOPES)):
            if value not in choices:
                raise ValueError(f"model.moe.router.{name}='{value}' is not one of {choices}")
        for name in ("capacity_factor", "aux_loss_coeff", "z_loss_coeff", "bias_update_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"model.moe.router.{name}({value}) must be finite and >= 0")
        if self.kind == "expert_choice" and self.capacity_factor <= 0:
            raise ValueError("model.moe.router.kind=expert_choice needs "
                             "model.moe.router.capacity_factor > 0 (tokens per expert)")
        if self.kind == "expert_choice" and self.bias_update_rate:
            raise ValueError("model.moe.router.bias_update_rate balances token choice; expert "
                             "choice is balanced by construction: set it to 0")


@dataclass
class MoEConfig:
    num_experts: int = 0  # 0: a dense model
    top_k: int = 2
    every: int = 1  # an MoE feed-forward in every k-th block ...
    first_dense: int = 0  # ... after this many dense blocks
    expert_hidden: int = 0  # 0: the dense feed-forward's hidden size
    shared_experts: int = 0  # always-on experts beside the routed ones (DeepSeek)
    # torch's grouped matmul over all experts at once, or the exact per-expert loop
    grouped_mm: bool = True
    router: RouterConfig = field(default_factory=RouterConfig)

    @property
    def enabled(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, layer_id: int) -> bool:
        return (self.enabled and layer_id >= self.first_dense
                and (layer_id - self.first_dense) % self.every == 0)

    def validate(self, *, n_layers: int) -> None:
        if not self.enabled:
            return
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"model.moe.top_k({self.top_k}) must be in "
                             f"[1, model.moe.num_experts({self.num_experts})]")
        if self.every < 1 or not 0 <= self.first_dense < n_layers:
            raise ValueError(f"model.moe.every({self.every}) must be >= 1 and "
                             f"model.moe.first_dense({self.first_dense}) in [0, "
                             f"model.n_layers({n_layers}))")
        if self.expert_hidden < 0 or self.shared_experts < 0:
            raise ValueError("model.moe.expert_hidden and model.moe.shared_experts must be >= 0")
        for name in ("num_experts", "expert_hidden", "shared_experts"):
            if getattr(self, name) >= 2**20:
                raise ValueError(f"model.moe.{name}({getattr(self, name)}) must be < 2**20")
        self.router.validate(self.top_k, self.num_experts)
