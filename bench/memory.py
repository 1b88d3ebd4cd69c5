"""Activation memory and compute cost of activation checkpointing, per mode, vs ``none``.

Activation memory is measured device-independently as the bytes autograd saves for backward
during one forward pass (each storage once). The analytic reference for ``none`` is
Korthikanti et al. (2022): s*b*h*(34 + 5*a*s/h) bytes per layer, derived for a GPT block
with 16-bit activations and dropout. Time is forward + backward, median of a few repeats.

    python bench/memory.py [--d-model 384] [--layers 6] [--heads 6] [--batch 8] [--seq 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from triforge.models import ModelConfig, build_model, materialize
from triforge.parallel.activation_checkpoint import apply_ac, saved_activation_bytes


def build(cfg: ModelConfig, mode: str, every: int):
    model = build_model(cfg, vocab_size=320, attention_backend="sdpa")
    apply_ac(model, mode=mode, every=every)
    return materialize(model, "cpu", seed=0)


def step_seconds(model, tokens: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model(tokens).float().logsumexp(-1).mean().backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])  # the first run warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("d-model", 384), ("layers", 6), ("heads", 6), ("batch", 8),
                          ("seq", 256), ("every", 2), ("repeats", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    cfg = ModelConfig(name="bench", d_model=args.d_model, n_layers=args.layers,
                      n_heads=args.heads, max_seq_len=args.seq)
    tokens = torch.randint(0, 320, (args.batch, args.seq))
    s, b, h, a = args.seq, args.batch, args.d_model, args.heads
    analytic = args.layers * s * b * h * (34 + 5 * a * s / h)
    results = {}
    for mode in ("none", "full", "selective"):
        model = build(cfg, mode, args.every)
        saved = saved_activation_bytes(lambda m=model: m(tokens).float().logsumexp(-1).mean())
        results[mode] = (saved, step_seconds(model, tokens, args.repeats))
    base_bytes, base_time = results["none"]
    print(f"model d={h} L={args.layers} heads={a}, batch {b} x seq {s}, fp32 activations")
    print(f"analytic (Korthikanti, 16-bit) for none: {analytic / 2**20:.1f} MiB; "
          f"measured none / analytic = {base_bytes / analytic:.2f}")
    for mode, (saved, seconds) in results.items():
        print(f"{mode:<10} activations {saved / 2**20:8.1f} MiB  ratio {saved / base_bytes:.2f}"
              f"  fwd+bwd time ratio {seconds / base_time:.2f}")


if __name__ == "__main__":
    main()
