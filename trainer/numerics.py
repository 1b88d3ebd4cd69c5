"""Numerical safety at each step boundary: non-finite losses or gradients, loss spikes.

Every rank must take the same decision (apply the update, skip it, or halt): a rank that
skips while another applies leaves replicas and shards out of step for the rest of the run.
So each rank computes its own flags and one all-reduce (MIN over ranks) agrees on them and
names the lowest rank that saw the problem.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from triforge.errors import TriforgeError
from triforge.models.side_outputs import attach_aux_loss
from triforge.parallel.context import ParallelContext


class NonfiniteHalt(TriforgeError):
    """Training stopped on a non-finite loss or gradient (``trainer.nonfinite=halt``)."""


@dataclass
class DebugConfig:
    """Testing aids. ``inject_nonfinite_at_step=N`` makes optimizer step N (1-based) non-finite
    on ``inject_nonfinite_rank`` (-1: every rank): ``into=loss`` multiplies the first
    microbatch's loss by NaN (NaN flows through backward), ``into=grad`` writes inf into one
    gradient after backward (what an fp16 overflow looks like), ``into=overflow`` (fp16)
    multiplies the first microbatch's loss by 2**40: the loss stays finite, its fp16
    gradients overflow for real (also inside an engine that keeps gradients in its own
    buffers, such as DeepSpeed's)."""

    inject_nonfinite_at_step: int = 0
    inject_nonfinite_rank: int = -1
    inject_nonfinite_into: str = "loss"  # loss | grad | overflow
    # An auxiliary loss aux_l2_coeff * sum(h**2) on block aux_l2_layer's output h (-1: off):
    # a side output of known gradient, to test that auxiliary losses train alike in every
    # layout (models/side_outputs.py).
    aux_l2_layer: int = -1
    aux_l2_coeff: float = 0.0
    # Preemption tests: after step N (and its checkpoint) wait, at most hold_timeout_s, until
    # this rank has received a preemption signal, so the signal lands at step N however busy
    # the machine is (0: off).
    hold_for_signal_at_step: int = 0
    hold_timeout_s: float = 300.0
    # DeepSpeed refuses fp16 on a CPU without oneDNN's fp16 kernels (its accelerator's
    # is_fp16_supported), though PyTorch computes fp16 on any CPU, more slowly: true lifts
    # that gate, so that DeepSpeed's fp16 path (its loss scaler, overflow skips, fp32 master
    # copies) can be tested on such machines. Never needed on a GPU.
    deepspeed_cpu_fp16: bool = False

    def validate(self) -> None:
        if self.inject_nonfinite_at_step < 0:
            raise ValueError(f"debug.inject_nonfinite_at_step({self.inject_nonfinite_at_step}) "
                             "must be >= 0")
        if self.inject_nonfinite_into not in ("loss", "grad", "overflow"):
            raise ValueError(f"debug.inject_nonfinite_into='{self.inject_nonfinite_into}' must "
                             "be loss, grad or overflow")
        if not (math.isfinite(self.aux_l2_coeff) and self.aux_l2_coeff >= 0):
            raise ValueError(f"debug.aux_l2_coeff({self.aux_l2_coeff}) must be finite and >= 0")
        if self.hold_for_signal_at_step < 0 or not self.hold_timeout_s >= 0:
            raise ValueError("debug.hold_for_signal_at_step and debug.hold_timeout_s must be "
                             ">= 0")


@dataclass(frozen=True)
class Verdict:
    """The agreed outcome of one step. ``*_rank``: lowest rank that saw the problem, or None."""

    loss_rank: int | None
    grad_rank: int | None
    spike: bool = False

    @property
    def nonfinite(self) -> bool:
        return self.loss_rank is not None or self.grad_rank is not None

    @property
    def apply(self) -> bool:
        return not (self.nonfinite or self.spike)

    @property
    def reason(self) -> str:
        if self.loss_rank is not None:
            return f"non-finite loss (first on rank {self.loss_rank})"
        if self.grad_rank is not None:
            return f"non-finite gradients (first on rank {self.grad_rank})"
        return "loss spike" if self.spike else "none"


class StepGuard:
    """Decides, identically on every rank, whether a step's update is applied.

    ``loss_scaling``: under fp16 a non-finite gradient with a finite loss is an overflow of the
    scaled gradients, the loss scaler's business (skip and back off), not a failure.
    """

    def __init__(self, ctx: ParallelContext, *, policy: str, spike_zscore: float,
                 spike_window: int, loss_scaling: bool):
        self.ctx = ctx
        self.policy = policy
        self.spike_zscore = spike_zscore
        self.loss_scaling = loss_scaling
        self._recent: deque[float] = deque(maxlen=spike_window)

    def check(self, step: int, local_loss: torch.Tensor, grad_norm: torch.Tensor,
              loss: float) -> Verdict:
        """``local_loss``: this rank's own loss sum (so the rank that produced a NaN is found),
        ``grad_norm``: the global norm, ``loss``: the global mean loss (same on every rank)."""
        world = self.ctx.dims.world_size
        rank, nobody = (torch.tensor(r, device=grad_norm.device) for r in (self.ctx.rank, world))
        flags = torch.stack([torch.where(torch.isfinite(t), nobody, rank)
                             for t in (local_loss.to(grad_norm.device), grad_norm)])
        self.ctx.min_over_world(flags)
        loss_rank, grad_rank = (int(r) if r < world else None for r in flags.tolist())
        verdict = Verdict(loss_rank, grad_rank, spike=self._is_spike(loss))
        if verdict.nonfinite and self.policy == "halt" and not self._overflow(verdict):
            what = "loss" if loss_rank is not None else "gradients"
            rank = loss_rank if loss_rank is not None else grad_rank
            raise NonfiniteHalt(f"non-finite {what} at step {step} (first seen on rank {rank}); "
                                "set trainer.nonfinite=skip to skip such steps instead")
        if verdict.apply:
            self._recent.append(loss)
        return verdict

    def _overflow(self, verdict: Verdict) -> bool:
        return self.loss_scaling and verdict.loss_rank is None

    def _is_spike(self, loss: float) -> bool:
        """Loss more than ``spike_zscore`` standard deviations above the recent window (of
        applied steps; at least 10 of them, so early noise does not trigger it)."""
        if self.spike_zscore <= 0 or len(self._recent) < 10 or not math.isfinite(loss):
            return False
        mean = sum(self._recent) / len(self._recent)
        std = math.sqrt(sum((x - mean) ** 2 for x in self._recent) / (len(self._recent) - 1))
        return loss > mean + self.spike_zscore * max(std, 1e-12)


class NonfiniteInjector:
    """Carries out ``DebugConfig``'s injection on the chosen step and rank."""

    def __init__(self, cfg: DebugConfig, rank: int):
        self.cfg = cfg
        self.rank = rank

    def active(self, step: int) -> bool:
        cfg = self.cfg
        return (cfg.inject_nonfinite_at_step == step
                and cfg.inject_nonfinite_rank in (-1, self.rank))

    def objective(self, objective, step: int):
        """``objective``, or a wrapper whose first loss this step is NaN (or 2**40 times
        larger: ``into=overflow``)."""
        into = self.cfg.inject_nonfinite_into
        if self.active(step) and into in FACTORS:
            return _ScaledLoss(objective, FACTORS[into])
        return objective

    def gradients(self, parts: list[nn.Module], step: int) -> None:
        if not (self.active(step) and self.cfg.inject_nonfinite_into == "grad"):
            return
        for part in parts:
            for p in part.parameters():
                if p.grad is not None:
                    grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
                    if grad.numel():
                        grad.view(-1)[0] = float("inf")
                        return


FACTORS = {"loss": float("nan"), "overflow": 2.0**40}


class _ScaledLoss:
    """An objective whose first ``loss`` call is multiplied by ``factor`` (then behaves
    normally)."""

    def __init__(self, objective, factor: float):
        self._objective = objective
        self._factor = factor
        self._done = False

    def __getattr__(self, name):
        return getattr(self._objective, name)

    def loss(self, logits, labels):
        value = self._objective.loss(logits, labels)
        if not self._done:
            self._done = True
            value = value * self._factor
        return value


def attach_debug_aux_loss(parts: list[nn.Module], *, layer: int, coeff: float) -> None:
    """``DebugConfig.aux_l2_*``: attach coeff * sum(h**2) of block ``layer``'s output h as an
    auxiliary loss, on whichever part holds that block. A sum, not a mean, so that sequence
    shards (tensor parallelism with sequence parallelism) add up to the whole."""
    if layer < 0:
        return

    def penalize(block: nn.Module, _args, out: torch.Tensor) -> torch.Tensor:
        aux = coeff * out.float().pow(2).sum()
        return attach_aux_loss(out, aux, block.controls.aux_loss_scale)

    for part in parts:
        if str(layer) in part.layers:
            part.layers[str(layer)].register_forward_hook(penalize)
