"""The training loop. ``fit()`` stays flat; evaluation, checkpointing and logging are small
objects it calls at step boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from triforge.parallel.context import ParallelContext

from .checkpoint import Checkpointer
from .config import OptimConfig, TrainerConfig
from .data.loader import WindowLoader
from .evaluate import Evaluator
from .optim import Optimizers, lr_at, set_lr
from .state import ModelOptimizerState, RNGState, TrainState
from .step import clip_gradients
from .throughput import Throughput


@dataclass
class Trainer:
    cfg: TrainerConfig
    optim_cfg: OptimConfig
    parts: list[nn.Module]  # the model, or this rank's pipeline stages of it
    optimizer: Optimizers
    runner: object  # DirectRunner or PipelineRunner: forward_backward(...), loss_sum(...)
    objective: object
    loader: WindowLoader
    evaluator: Evaluator | None
    checkpointer: Checkpointer
    throughput: Throughput
    sinks: list
    device: torch.device
    config_yaml: str
    ctx: ParallelContext = field(default_factory=ParallelContext.single)

    def __post_init__(self) -> None:
        self.state = TrainState()
        self._tensor_state = ModelOptimizerState(self.parts, self.optimizer.optimizers)
        self._json_state = {"train": self.state, "data": self.loader, "rng": RNGState()}
        self._losses: list[torch.Tensor] = []

    @property
    def model(self) -> nn.Module:
        """The whole model (single stage): for sampling and inspection."""
        if len(self.parts) != 1:
            raise RuntimeError("the model is split into pipeline stages on this rank")
        return self.parts[0]

    @property
    def microbatches(self) -> int:
        return self.cfg.microbatches(self.ctx.dims.dp)

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
                with self.throughput.paused():
                    metrics.update(self.evaluator.run(self.runner, self.parts, self.device,
                                                      self.ctx))
            if step % self.cfg.log_every == 0 or step == stop or "val_loss" in metrics:
                self.log(step, metrics)
            else:
                self._advance_sinks(step)
            if self.checkpointer.should_save(step) and step != stop:
                with self.throughput.paused():
                    self.save()

    def train_step(self) -> dict:
        lr = lr_at(self.state.step, self.optim_cfg, self.cfg.max_steps)
        set_lr(self.optimizer, lr)
        windows = self.loader.next_batch(self.cfg.batch_size, dp_rank=self.ctx.dp_rank,
                                         dp_size=self.ctx.dims.dp)
        batch = self.objective.make_batch(windows)
        loss = self.runner.forward_backward(self.objective, batch, ctx=self.ctx,
                                            microbatches=self.microbatches, device=self.device)
        grad_norm = clip_gradients(self.parts, self.cfg.grad_clip, self.ctx)
        self.optimizer.step()
        self.optimizer.zero_grad()
        tokens = self.cfg.batch_size * self.cfg.seq_len
        self.state.step += 1
        self.state.tokens_seen += tokens
        self.throughput.add(tokens)
        self._losses.append(loss)
        return {"lr": lr, "grad_norm": grad_norm}

    def log(self, step: int, metrics: dict) -> None:
        # One device sync per log interval, not per step: losses stay on the device until now.
        loss = torch.stack(self._losses).mean().item() if self._losses else float("nan")
        self._losses.clear()
        record = {"loss": loss, **metrics, **self.throughput.report()}
        record["grad_norm"] = float(record["grad_norm"])
        record["tokens_seen"] = self.state.tokens_seen
        for sink in self.sinks:
            sink.log(step, record)

    def _advance_sinks(self, step: int) -> None:
        for sink in self.sinks:
            if hasattr(sink, "advance"):
                sink.advance(step)

    def save(self):
        return self.checkpointer.save(self.state.step, self._tensor_state, self._json_state,
                                      config_yaml=self.config_yaml)

    def resume(self, path) -> None:
        self.checkpointer.load(path, self._tensor_state, self._json_state)
