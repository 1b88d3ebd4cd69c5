"""The training loop. ``fit()`` stays flat; evaluation, checkpointing and logging are small
objects it calls at step boundaries."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from triforge.parallel.context import ParallelContext

from .checkpoint import Checkpointer
from .config import OptimConfig, TrainerConfig
from .data.loader import BatchSource
from .engine import DataParallelEngine
from .evaluate import Evaluator
from .hooks import StepHooks
from .loggers import MetricsSink
from .loss_scale import LossScaler
from .numerics import NonfiniteInjector, StepGuard, Verdict
from .objectives import Objective
from .optim import lr_at, set_lr
from .precision import PrecisionPolicy
from .runner import StepRunner
from .state import RNGState, TrainState
from .throughput import Throughput


class PreemptionWatch(Protocol):
    """Where preemption signals are recorded (launcher/signals.py): the first signal's name
    (or None) and its monotonic time, read by the trainer at step boundaries."""

    received: str | None
    at: float | None


class Preempted(Exception):
    """Raised by ``fit`` after the checkpoint of a preempted run is committed."""

    def __init__(self, step: int):
        super().__init__(f"preempted at step {step}")
        self.step = step


@dataclass
class Trainer:
    cfg: TrainerConfig
    optim_cfg: OptimConfig
    parts: list[nn.Module]  # the model, or this rank's pipeline stages of it
    engine: DataParallelEngine  # gradient sync, unscale, norm, clip and step; tensor state
    runner: StepRunner
    objective: Objective
    loader: BatchSource
    evaluator: Evaluator | None
    checkpointer: Checkpointer
    throughput: Throughput
    sinks: list[MetricsSink]
    device: torch.device
    config_yaml: str
    precision: PrecisionPolicy
    scaler: LossScaler
    guard: StepGuard
    injector: NonfiniteInjector
    ctx: ParallelContext = field(default_factory=ParallelContext.single)
    message: Callable[[str], None] = print  # one-off notices (the main rank's log)
    watch: PreemptionWatch | None = None
    hooks: StepHooks = field(default_factory=StepHooks)
    # (step, timeout s) of debug.hold_for_signal_*: a testing aid, (0, 0) is off
    hold_for_signal: tuple[int, float] = (0, 0.0)

    def __post_init__(self) -> None:
        self.state = TrainState()
        self._tensor_state = self.engine.tensor_state()
        self._json_state = {"train": self.state, "data": self.loader, "scaler": self.scaler}
        self._rank_state = {"rng": RNGState()}  # per rank: streams differ between ranks
        self._losses: list[float] = []

    @property
    def model(self) -> nn.Module:
        """The whole model (single stage): for sampling and inspection."""
        if len(self.parts) != 1:
            raise RuntimeError("the model is split into pipeline stages on this rank")
        return self.parts[0]

    def fit(self) -> None:
        """Train until ``stop_at_step`` (or ``max_steps``), logging, evaluating and saving."""
        stop = self.cfg.stop_at_step or self.cfg.max_steps
        for part in self.parts:
            part.train()
        self.throughput.reset()
        while self.state.step < stop:
            metrics = self.train_step()
            step = self.state.step
            if self.evaluator is not None and self.evaluator.should_run(step):
                with self.throughput.paused(), self.precision.autocast(self.device):
                    metrics.update(self.evaluator.run(self.runner, self.parts, self.device,
                                                      self.ctx))
            if step % self.cfg.log_every == 0 or step == stop or "val_loss" in metrics:
                self.log(step, metrics)
            else:
                self._advance_sinks(step)
            if self.checkpointer.should_save(step) and step != stop:
                with self.throughput.paused():
                    self.save()
            self.checkpointer.poll()
            if step == self.hold_for_signal[0]:
                self._hold_for_signal()
            if self._preempted():
                self._stop_for_preemption(step)

    def _hold_for_signal(self) -> None:
        """Wait until this rank has a preemption signal (or the timeout): the signal then
        lands at this step whatever the machine's load (debug.hold_for_signal_at_step)."""
        deadline = time.monotonic() + self.hold_for_signal[1]
        while self.watch is not None and self.watch.received is None:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)  # the signal handler runs between these sleeps

    def _preempted(self) -> bool:
        """Whether any rank has received a preemption signal. All ranks must agree (signals
        reach ranks at different times), or some would save while others train on."""
        if self.watch is None:
            return False
        world = self.ctx.dims.world_size
        flag = torch.tensor([self.ctx.rank if self.watch.received else world], device=self.device)
        return int(self.ctx.min_over_world(flag)) < world

    def _stop_for_preemption(self, step: int) -> None:
        self.checkpointer.wait()
        if self.checkpointer.complete_steps()[-1:] != [step]:
            self.save()
            self.checkpointer.wait()
        after = (f"{time.monotonic() - self.watch.at:.1f} s after {self.watch.received}"
                 if self.watch.at is not None else "after a signal to another rank")
        self.message(f"preempted: checkpoint step_{step} committed {after}; exiting for requeue")
        raise Preempted(step)

    def train_step(self) -> dict:
        """One optimizer step: forward/backward, unscale, agree on the verdict, then update
        or skip. A skipped step still consumes its data and advances the schedule (as in
        Megatron-LM), so a resumed run replays the same sequence."""
        step = self.state.step + 1
        lr = lr_at(self.state.step, self.optim_cfg, self.cfg.max_steps)
        set_lr(self.engine.optimizer, lr)
        waited = time.perf_counter()
        windows = self.loader.next_batch(self.cfg.batch_size, dp_rank=self.ctx.dp_rank,
                                         dp_size=self.ctx.dims.dp)
        self.throughput.add_wait(time.perf_counter() - waited)
        batch = self.ctx.context_shard(self.objective.make_batch(windows))
        self.hooks.run("step_start", step)
        with self.precision.autocast(self.device):
            loss, local_loss = self.runner.forward_backward(
                self.injector.objective(self.objective, step), batch, ctx=self.ctx,
                device=self.device, loss_scale=self.scaler.loss_factor)
        self.injector.gradients(self.parts, step)
        self.engine.unscale_(self.scaler)
        grad_norm = self.engine.grad_norm()
        loss = loss.item()  # one host sync per step: the verdict needs it on the host anyway
        verdict = self.guard.check(step, local_loss, grad_norm, loss)
        self._update(step, verdict, grad_norm)
        self.hooks.run("step_end", step)
        tokens = self.cfg.batch_size * self.cfg.seq_len
        self.state.step = step
        self.state.tokens_seen += tokens
        self.throughput.add(tokens)
        if verdict.apply:
            self._losses.append(loss)
        return {"lr": lr, "grad_norm": grad_norm, **self._precision_metrics()}

    def _update(self, step: int, verdict: Verdict, grad_norm: torch.Tensor) -> None:
        """Apply the step, or leave parameters and optimizer state untouched bit for bit."""
        self.scaler.update(overflow=verdict.grad_rank is not None)
        if verdict.apply:
            self.hooks.run("before_optimizer_step", step)
            self.engine.step(max_norm=self.cfg.grad_clip, grad_norm=grad_norm)
            self.hooks.run("after_optimizer_step", step)
        else:
            self.engine.skip(grad_norm)
            self.state.skipped_steps += 1
            self.message(f"[warn] step {step} skipped: {verdict.reason} "
                         f"({self.state.skipped_steps} skipped so far)")
        self.engine.zero_grad()

    def _precision_metrics(self) -> dict:
        metrics = {"skipped_steps": self.state.skipped_steps}
        if self.scaler.enabled:
            metrics["loss_scale"] = self.scaler.scale
        return metrics

    def log(self, step: int, metrics: dict) -> None:
        # Mean over the interval's applied steps (a skipped step's loss may be NaN).
        loss = sum(self._losses) / len(self._losses) if self._losses else float("nan")
        self._losses.clear()
        record = {"loss": loss, **metrics, **self.throughput.report()}
        record["grad_norm"] = float(record["grad_norm"])
        record["tokens_seen"] = self.state.tokens_seen
        self.hooks.run("at_log", step, record)
        for sink in self.sinks:
            sink.log(step, record)

    def _advance_sinks(self, step: int) -> None:
        for sink in self.sinks:
            sink.advance(step)

    def save(self):
        return self.checkpointer.save(self.state.step, self._tensor_state, self._json_state,
                                      config_yaml=self.config_yaml, rank_state=self._rank_state)

    def resume(self, path) -> None:
        self.checkpointer.load(path, self._tensor_state, self._json_state, self._rank_state)

    def start_from(self, path, *, optimizer: bool) -> None:
        """checkpoint.init_from: another run's weights (and optimizer state) as this run's
        step 0; the schedule, data cursor and RNG streams stay this run's own."""
        state = self._tensor_state if optimizer else self.engine.model_state()
        self.checkpointer.load_start(path, state)
