"""Framework overhead: tokens/s of the triforge Trainer vs a minimal hand-written loop.

Both train the same model (same preset, seed, batch, sequence length, AdamW settings and
gradient clipping) on the same data, in one process, alternating in rounds so that machine
noise hits both alike. Prints the ratio triforge / hand loop (target >= 0.95).

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
from triforge.trainer.optim import build_optimizer


def hand_loop(job, trainer, steps: int) -> float:
    """The loop a user would write by hand; returns seconds for ``steps`` steps."""
    model = materialize(build_model(job.model, vocab_size=trainer.model.vocab_size,
                                    attention_backend=job.attention.backend), trainer.device,
                        seed=job.seed)
    opt = build_optimizer(model, job.optim)
    loader = trainer.loader
    start = time.perf_counter()
    for _ in range(steps):
        windows = loader.windows(loader.sampler.next_batch(job.trainer.batch_size))
        windows = windows.to(trainer.device)
        logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), job.trainer.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    return time.perf_counter() - start


def framework_loop(trainer, steps: int) -> float:
    trainer.cfg = dataclasses.replace(trainer.cfg, stop_at_step=trainer.state.step + steps)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8)
    args, overrides = parser.parse_known_args()
    total = (args.rounds + 1) * args.steps * 2
    with tempfile.TemporaryDirectory() as run_dir:
        job = load_config([f"run.dir={run_dir}", "logging.wandb.enabled=false",
                           "logging.progress_bar=false", "trainer.eval_every=0",
                           "checkpoint.every=0", f"trainer.max_steps={total}",
                           "trainer.log_every=4", *overrides])
        env = ProcessEnv()
        trainer, _ = build_trainer(job, env, ParallelContext.single(),
                                   pick_device(job.trainer.device, env), log=print)
        trainer.sinks = trainer.sinks[:1]  # keep the JSONL file, not console lines, in timings
        tokens = args.steps * job.trainer.batch_size * job.trainer.seq_len
        framework_loop(trainer, args.steps)  # warm-up rounds, not measured
        hand_loop(job, trainer, args.steps)
        ours, theirs = [], []
        for r in range(args.rounds):
            # Alternate which loop goes first, so neither always runs on a warmer machine.
            if r % 2:
                theirs.append(tokens / hand_loop(job, trainer, args.steps))
                ours.append(tokens / framework_loop(trainer, args.steps))
            else:
                ours.append(tokens / framework_loop(trainer, args.steps))
                theirs.append(tokens / hand_loop(job, trainer, args.steps))
            print(f"round {r}: triforge {ours[-1]:,.0f} tok/s  hand loop {theirs[-1]:,.0f} tok/s")
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"model {job.model.name}, batch {job.trainer.batch_size} x {job.trainer.seq_len}: "
          f"median triforge {statistics.median(ours):,.0f} tok/s, hand loop "
          f"{statistics.median(theirs):,.0f} tok/s, ratio {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
