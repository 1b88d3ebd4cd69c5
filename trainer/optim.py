"""AdamW and the learning-rate schedule.

The schedule is a pure function of the step, so it has no state of its own to checkpoint:
resuming at step N gives the same learning rate as the uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import nn

from .config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (norm gains are not decayed, as in GPT-2/Llama)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.impl == "apex":
        from apex.optimizers import FusedAdam  # optional, checked at start-up

        return FusedAdam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                         adam_w_mode=True)
    kind = {"foreach": True} if cfg.impl == "foreach" else {"fused": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             **kind)


def check_optim_impl(impl: str) -> None:
    """Fail at start-up, with the fix, when ``optim.impl`` cannot run here."""
    if impl == "apex" and not (torch.cuda.is_available()
                               and importlib.util.find_spec("amp_C")):
        raise ValueError("optim.impl=apex needs a CUDA GPU and NVIDIA apex built with its CUDA "
                         "extensions (built from github.com/NVIDIA/apex, see the README); use "
                         "optim.impl=fused for PyTorch's fused AdamW")


class Optimizers:
    """One AdamW per model part (pipeline stages of this rank, or just the model), so each
    part's optimizer state keys are that part's own parameter names (checkpoints stay
    loadable into any layout)."""

    def __init__(self, parts: list[nn.Module], cfg: OptimConfig):
        self.parts = parts
        self.optimizers = [build_optimizer(part, cfg) for part in parts]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then decay (or
    none, or wsd's plateau and final decay)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":  # stable until the last decay_steps, then linear to the floor
        decay_steps = max(1, min(cfg.decay_steps, max_steps - cfg.warmup_steps))
        progress = min(1.0, max(0.0, (step - (max_steps - decay_steps)) / decay_steps))
        return cfg.lr * (1.0 - (1.0 - cfg.min_lr_ratio) * progress)
    decay_steps = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    if cfg.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # linear
        factor = 1.0 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * factor)


def set_lr(optimizer: torch.optim.Optimizer | Optimizers, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
