"""Progressive layer dropping: compute skipped vs time saved, and loss at equal steps and at
equal wall-clock time, against the same run without dropping.

Both runs train the same model (preset, seed, data, batch, schedule) in one process; their
steps alternate so machine noise hits both alike. The dropping run then continues for the
steps it would make in the same wall-clock time. Prints, per objective:

- expected skipped fraction of block compute, sum_t sum_l (1 - p_l(t)) / (T * L), and the
  fraction the run actually skipped;
- the median step-time ratio (dropping / not) and time saved relative to compute skipped
  (target >= 0.8: a dropped block really costs nothing);
- validation loss of both after T steps, and of the dropping run after the same time (the
  steps it makes in the time the other needs for T, from the median step-time ratio).

    python bench/layer_drop.py [hydra overrides, e.g. model=tiny] [--steps 60]
                               [--objectives clm mlm]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from triforge.launcher.build import build_trainer, pick_device
from triforge.launcher.config import load_config
from triforge.launcher.env import ProcessEnv
from triforge.parallel.context import ParallelContext
from triforge.trainer.layer_drop import decisions, keep_probability, theta_at

DROP = ["layer_drop.enabled=true", "layer_drop.theta=0.5", "layer_drop.gamma=0.05"]


def build(overrides: list[str], run_dir: str):
    job = load_config([*overrides, f"run.dir={run_dir}", "logging.wandb.enabled=false",
                       "logging.progress_bar=false", "checkpoint.every=0",
                       "checkpoint.save_at_end=false", "trainer.eval_every=1000000",
                       "trainer.eval_batches=8"])
    env = ProcessEnv()
    trainer, _ = build_trainer(job, env, ParallelContext.single(),
                               pick_device(job.trainer.device, env), log=lambda *_: None)
    for part in trainer.parts:
        part.train()
    return job, trainer


def timed_step(trainer) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one step. CPU time counts only this process's work, so
    it stays meaningful when other jobs load the machine; wall-clock is what a user waits."""
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def median_ratio(times_a: list, times_b: list, which: int) -> float:
    warm = slice(max(3, len(times_a) // 10), None)  # early steps pay for allocation, caches
    return statistics.median(b[which] / a[which]
                             for a, b in zip(times_a[warm], times_b[warm], strict=True))


def val_loss(trainer) -> float:
    """The same 8 validation batches for every run (every block, unscaled)."""
    with torch.no_grad():
        out = trainer.evaluator.run(trainer.runner, trainer.parts, trainer.device, trainer.ctx)
    for part in trainer.parts:
        part.train()
    return out["val_loss"]


def compare(objective: str, steps: int, extra: list[str]) -> None:
    base = [f"objective={objective}", f"trainer.max_steps={steps * 2}", *extra]
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        job_a, plain = build(base, a)
        job_b, drop = build([*base, *DROP], b)
        times_a, times_b = [], []
        for i in range(steps):  # alternate which run goes first: no order bias
            if i % 2:
                times_b.append(timed_step(drop))
                times_a.append(timed_step(plain))
            else:
                times_a.append(timed_step(plain))
                times_b.append(timed_step(drop))
        same_steps = val_loss(plain), val_loss(drop)
        # Equal time from the median step times (robust to a burst of load on the machine):
        # the steps the dropping run makes while the other makes ``steps``.
        ratio, cpu_ratio = median_ratio(times_a, times_b, 0), median_ratio(times_a, times_b, 1)
        extra_steps = round(steps / ratio) - steps
        for _ in range(extra_steps):
            timed_step(drop)
        same_time = val_loss(drop)
    n = job_b.model.n_layers
    expected = sum(1 - keep_probability(layer, n, theta_at(t, job_b.layer_drop))
                   for t in range(steps) for layer in range(n)) / (steps * n)
    skipped = _skipped_fraction(job_b, steps)
    print(f"{objective}: {steps} steps, {job_b.model.name} model, theta_bar "
          f"{job_b.layer_drop.theta}, gamma {job_b.layer_drop.gamma}")
    print(f"  block compute skipped: expected {expected:.3f}, drawn {skipped:.3f}")
    for name, r in (("wall-clock", ratio), ("CPU", cpu_ratio)):
        share = f"{(1 - r) / skipped:.2f}" if skipped else "n/a"
        print(f"  {name} step time dropping / not: median {r:.3f} (time saved {1 - r:.3f}, "
              f"{share} of the skipped fraction; target >= 0.8)")
    print(f"  val loss after {steps} steps: {same_steps[0]:.4f} without, {same_steps[1]:.4f} "
          f"with dropping; with dropping after the same time ({steps + extra_steps} steps): "
          f"{same_time:.4f}")


def _skipped_fraction(job, steps: int) -> float:
    """The fraction of block forwards the decisions of steps 1..T actually skipped."""
    n = job.model.n_layers
    drawn = [decisions(job.seed, s, n, job.layer_drop) for s in range(1, steps + 1)]
    return sum(not k for d in drawn for k in d) / (steps * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--objectives", nargs="+", default=["clm", "mlm"])
    args, overrides = parser.parse_known_args()
    torch.manual_seed(0)
    for objective in args.objectives:
        compare(objective, args.steps, overrides)


if __name__ == "__main__":
    main()
