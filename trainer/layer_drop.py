"""Progressive layer dropping (Zhang & He, NeurIPS 2020), safe under every parallel layout.

At optimizer step t (0-based: the steps already taken) the keep ratio is
theta(t) = (1 - theta_bar) * exp(-gamma * t) + theta_bar, and block l of L (1-based) is kept
with probability p_l = 1 - (l / L) * (1 - theta(t)): deeper blocks are dropped more, and
more as training goes on. A kept pre-norm block scales both residual branches by 1 / p_l
(h = x + Attn(norm(x)) / p; out = h + FFN(norm(h)) / p), so the expected output is that of
the full block; a dropped block is the identity and costs no compute, forward or backward.
Evaluation and generation use every block, unscaled.

Decisions are drawn from a generator seeded by (seed, step, layer) alone, so every rank of
every mesh dimension and every pipeline stage takes the same ones without a collective:
ranks that skipped different blocks would wait for each other's FSDP collectives until the
timeout. ``check_agreement`` adds a cheap all-reduce per step that turns such a divergence
into an error instead. Because the decisions are a function of the step, a resumed run
draws the same ones: there is no schedule state to checkpoint.

A dropped block's parameters get no gradient (None, not zero), so AdamW leaves them, their
moments and their weight decay untouched for that step, in every layout alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from triforge.errors import TriforgeError
from triforge.parallel.context import ParallelContext

_STREAM = 7  # keeps these draws apart from other per-(seed, step) streams


@dataclass
class LayerDropConfig:
    enabled: bool = False
    theta: float = 0.5  # theta_bar: the keep ratio the schedule decays to
    gamma: float = 0.001  # decay rate per optimizer step
    check_agreement: bool = False  # all-reduce the decisions each step (debugging aid)

    def validate(self) -> None:
        if not 0 < self.theta <= 1 or self.gamma < 0:
            raise ValueError(f"layer_drop.theta({self.theta}) must be in (0, 1] and "
                             f"layer_drop.gamma({self.gamma}) >= 0")


def theta_at(t: int, cfg: LayerDropConfig) -> float:
    return (1 - cfg.theta) * math.exp(-cfg.gamma * t) + cfg.theta


def keep_probability(layer: int, n_layers: int, theta: float) -> float:
    """p_l for block ``layer`` (0-based index, so l = layer + 1)."""
    return 1 - (layer + 1) / n_layers * (1 - theta)


def decisions(seed: int, step: int, n_layers: int, cfg: LayerDropConfig) -> list[bool]:
    """Whether each block runs in optimizer step ``step`` (1-based): the same on every rank."""
    theta = theta_at(step - 1, cfg)
    return [np.random.default_rng([seed, step, layer, _STREAM]).random()
            < keep_probability(layer, n_layers, theta) for layer in range(n_layers)]


class LayerDropDivergence(TriforgeError):
    """Ranks took different layer-drop decisions (``layer_drop.check_agreement``)."""


class LayerDrop:
    """Sets every block's controls at the start of each step and restores them after it;
    reports ``layer_drop_theta`` and ``layers_kept`` at log time (trainer hooks)."""

    def __init__(self, cfg: LayerDropConfig, *, seed: int, n_layers: int,
                 parts: list[nn.Module], ctx: ParallelContext):
        self.cfg, self.seed, self.n_layers = cfg, seed, n_layers
        self.parts, self.ctx = parts, ctx
        self.theta, self.kept = 1.0, n_layers

    def step_start(self, step: int) -> None:
        keep = decisions(self.seed, step, self.n_layers, self.cfg)
        if self.cfg.check_agreement:
            check_agreement(keep, step, self.ctx)
        self.theta = theta_at(step - 1, self.cfg)
        self.kept = sum(keep)
        for part in self.parts:
            for layer, controls in part.blocks_controls().items():
                controls.keep = keep[layer]
                p = keep_probability(layer, self.n_layers, self.theta)
                controls.residual_scale = 1.0 / p if keep[layer] else 1.0

    def step_end(self, step: int) -> None:
        for part in self.parts:
            for controls in part.blocks_controls().values():
                controls.keep, controls.residual_scale = True, 1.0

    def at_log(self, step: int, metrics: dict) -> None:
        metrics["layer_drop_theta"] = self.theta
        metrics["layers_kept"] = self.kept

    def install(self, hooks) -> None:
        hooks.step_start.append(self.step_start)
        hooks.step_end.append(self.step_end)
        hooks.at_log.append(self.at_log)


def check_agreement(keep: list[bool], step: int, ctx: ParallelContext) -> None:
    """All ranks' decisions as a bit mask: its MIN and its MAX over the world agree only if
    every rank holds the same mask."""
    mask = sum(1 << i for i, k in enumerate(keep) if k)
    both = torch.tensor([mask, -mask], dtype=torch.int64, device=ctx.collective_device())
    ctx.min_over_world(both)
    if int(both[0]) != -int(both[1]):
        raise LayerDropDivergence(f"layer-drop decisions differ across ranks at step {step} "
                                  f"(this rank keeps mask {mask:#x}); every rank must use the "
                                  "same seed and layer_drop settings")
