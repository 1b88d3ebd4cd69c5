"""Framework overhead: tokens/s of the triforge Trainer vs a minimal hand-written loop.

Both train the same model (same preset, seed, batch, sequence length, AdamW settings and
gradient clipping) on the same data, in one process, alternating in rounds so that machine
noise hits both alike; both stay built and warm between rounds. Each round's rate comes
from its median step time (first step dropped); prints every round's ratio triforge / hand
loop and their min / median / max (target >= 0.97).

    python bench/overhead.py [--rounds 6] [--steps 8] [hydra overrides, e.g. model=tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from triforge.launcher.build import build_trainer, pick_device
from triforge.launcher.config import load_config
from triforge.launcher.env import ProcessEnv
from triforge.models import build_model, materialize
from triforge.parallel.context import ParallelContext
from triforge.trainer.data import GlobalSampler, WindowLoader
from triforge.trainer.optim import build_optimizer


class HandLoop:
    """The loop a user would write by hand, built once and kept warm across rounds."""

    def __init__(self, job, trainer):
        self.job, self.trainer = job, trainer
        self.model = materialize(build_model(job.model, vocab_size=trainer.model.vocab_size,
                                             attention_backend=job.attention.backend),
                                 trainer.device, seed=job.seed)
        self.opt = build_optimizer(self.model, job.optim)
        self.loader = own_loader(job, trainer)

    def run(self, steps: int) -> list[float]:
        """Seconds of each of ``steps`` steps."""
        job, loader, times = self.job, self.loader, []
        for _ in range(steps):
            start = time.perf_counter()
            windows = loader.windows(loader.sampler.next_batch(job.trainer.batch_size))
            windows = windows.to(self.trainer.device)
            logits = self.model(windows[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), job.trainer.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            loss.item()  # the trainer reads each step's loss too
            times.append(time.perf_counter() - start)
        return times


def own_loader(job, trainer) -> WindowLoader:
    """A loader of its own over the trainer's training split, same seed (the trainer's
    reads ahead in a thread)."""
    mine = getattr(trainer.loader, "source", trainer.loader)
    return WindowLoader(mine.split, mine.seq_len,
                        GlobalSampler(mine.sampler.num_samples, seed=job.seed))


def build_bench_trainer(run_dir: str, total_steps: int, overrides: list[str]):
    """(job, a single-process Trainer for ``total_steps``, its JSONL sink only)."""
    job = load_config([f"run.dir={run_dir}", "logging.wandb.enabled=false",
                       "logging.progress_bar=false", "trainer.eval_every=0",
                       "checkpoint.every=0", f"trainer.max_steps={total_steps}",
                       "trainer.log_every=4", *overrides])
    env = ProcessEnv()
    trainer, _ = build_trainer(job, env, ParallelContext.single(),
                               pick_device(job.trainer.device, env), log=print)
    trainer.sinks = trainer.sinks[:1]  # keep the JSONL file, not console lines, in timings
    return job, trainer


def alternate(ours, theirs, rounds: int, steps: int, tokens: int) -> list[tuple[float, float]]:
    """(ours, theirs) tokens/s per round after one warm-up round each, alternating which
    loop goes first, so neither always runs on a warmer machine."""
    ours.run(steps)
    theirs.run(steps)
    rates = []
    for r in range(rounds):
        order = (theirs, ours) if r % 2 else (ours, theirs)
        got = {loop: step_rate(loop.run(steps), tokens) for loop in order}
        rates.append((got[ours], got[theirs]))
    return rates


class FrameworkLoop:
    """``Trainer.fit`` for ``steps`` more steps; each step's time from the trainer's own
    step-start hook (so the call's set-up is not counted)."""

    def __init__(self, trainer):
        self.trainer, self.starts = trainer, []
        trainer.hooks.step_start.append(lambda _step: self.starts.append(time.perf_counter()))

    def run(self, steps: int) -> list[float]:
        trainer = self.trainer
        trainer.cfg = dataclasses.replace(trainer.cfg, stop_at_step=trainer.state.step + steps)
        self.starts.clear()
        trainer.fit()
        ends = [*self.starts[1:], time.perf_counter()]
        return [b - a for a, b in zip(self.starts, ends, strict=True)]


def step_rate(times: list[float], tokens_per_step: int) -> float:
    """Tokens/s of a round from its median step time, its first (warm-up) step dropped, so a
    burst of load on the machine is an outlier rather than a shift."""
    return tokens_per_step / statistics.median(times[1:])


def measure(rounds: int, steps: int, overrides: list[str]) -> dict:
    """Per-round ratios triforge / hand loop (and the rates), alternating the order."""
    with tempfile.TemporaryDirectory() as run_dir:
        job, trainer = build_bench_trainer(run_dir, (rounds + 1) * steps * 2, overrides)
        tokens = job.trainer.batch_size * job.trainer.seq_len
        rows = alternate(FrameworkLoop(trainer), HandLoop(job, trainer), rounds, steps, tokens)
    ratios = [ours / hand for ours, hand in rows]
    return {"model": job.model.name, "batch": job.trainer.batch_size,
            "seq": job.trainer.seq_len, "ratios": ratios, "rates": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8)
    args, overrides = parser.parse_known_args()
    result = measure(args.rounds, args.steps, overrides)
    ratios = result["ratios"]
    for r, ((ours, theirs), ratio) in enumerate(zip(result["rates"], ratios, strict=True)):
        print(f"round {r}: triforge {ours:,.0f} tok/s  hand loop {theirs:,.0f} tok/s  "
              f"ratio {ratio:.3f}")
    print(f"model {result['model']}, batch {result['batch']} x {result['seq']}: "
          f"triforge / hand loop per round: min {min(ratios):.3f}, median "
          f"{statistics.median(ratios):.3f}, max {max(ratios):.3f} (target >= 0.97)")


if __name__ == "__main__":
    main()
