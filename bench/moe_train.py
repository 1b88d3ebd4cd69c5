"""Mixture of experts in training: ``moe_small`` against the dense ``small`` of equal active
parameters, at equal steps and at equal wall-clock time, and the load balance that each
balancing method gives.

All runs train in one process on the same data (seed, batch, schedule), one step each in
turn (the order alternates), so machine noise hits them alike. Prints, per run: validation
loss after the steps, the median step time relative to the dense run's, and the balance of
tokens over experts over the last quarter of the steps (coefficient of variation of the
tokens per expert, and the busiest expert's share relative to a perfect 1/E, both averaged
over layers and steps); then the dense run's validation loss after the wall-clock time the
MoE run needed (the dense run continues for the steps it makes in that time).

    python bench/moe_train.py [--steps 150] [hydra overrides for every run]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from layer_drop import build, median_ratio, timed_step, val_loss

from triforge.trainer.moe_balance import moe_layers

RUNS = {
    "dense small": ["model=small"],
    "moe_small, no balancing": ["model=moe_small", "model.moe.router.aux_loss_coeff=0"],
    "moe_small, balance loss 0.01": ["model=moe_small"],
    "moe_small, bias 1e-3": ["model=moe_small", "model.moe.router.aux_loss_coeff=0",
                             "model.moe.router.bias_update_rate=1e-3"],
    "moe_small, expert choice": ["model=moe_small", "model.moe.router.kind=expert_choice",
                                 "model.moe.router.capacity_factor=1.0",
                                 "model.moe.router.aux_loss_coeff=0"],
}


def balance(trainer) -> tuple[float, float] | None:
    """(mean coefficient of variation, mean busiest share x E) over this step's MoE layers."""
    layers = moe_layers(trainer.parts)
    if not layers:
        return None
    cvs, peaks = [], []
    for layer in layers:
        counts, _ = layer.step_statistics(trainer.runner.microbatches)
        cvs.append((counts.std(unbiased=False) / counts.mean()).item())
        peaks.append((counts.max() / counts.mean()).item())
    return statistics.mean(cvs), statistics.mean(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    args, overrides = parser.parse_known_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        trainers, times, stats = {}, {}, {}
        for i, (name, extra) in enumerate(RUNS.items()):
            _, trainers[name] = build([*extra, f"trainer.max_steps={args.steps * 3}",
                                       *overrides], f"{root}/{i}")
            times[name], stats[name] = [], []
        for step in range(args.steps):
            order = list(RUNS) if step % 2 == 0 else list(reversed(RUNS))
            for name in order:
                times[name].append(timed_step(trainers[name]))
                if step >= args.steps * 3 // 4:
                    stats[name].append(balance(trainers[name]))
        report(trainers, times, stats, args.steps)


def report(trainers, times, stats, steps: int) -> None:
    dense = "dense small"
    print(f"{steps} steps each, batch {trainers[dense].cfg.batch_size} x seq "
          f"{trainers[dense].cfg.seq_len}, {torch.get_num_threads()} threads")
    print(f"{'run':<30}{'val loss':>10}{'step time':>11}{'tokens cv':>11}{'busiest':>9}")
    moe_ratio = None
    for name, trainer in trainers.items():
        ratio = median_ratio(times[dense], times[name], 0)
        if name == "moe_small, balance loss 0.01":
            moe_ratio = ratio
        cv = peak = "-"
        if stats[name] and stats[name][0] is not None:
            cv = f"{statistics.mean(s[0] for s in stats[name]):.3f}"
            peak = f"{statistics.mean(s[1] for s in stats[name]):.2f}"
        print(f"{name:<30}{val_loss(trainer):>10.4f}{ratio:>10.2f}x{cv:>11}{peak:>9}")
    extra = round(steps * moe_ratio) - steps
    for _ in range(max(extra, 0)):
        timed_step(trainers[dense])
    print(f"dense small after the wall-clock time of moe_small's {steps} steps "
          f"({steps + max(extra, 0)} steps): val loss {val_loss(trainers[dense]):.4f}")


if __name__ == "__main__":
    main()
