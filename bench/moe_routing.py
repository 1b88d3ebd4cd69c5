"""Time per call of the Triton MoE routing kernels against the PyTorch reference (GPU),
forward + backward, alternating the two in each round.

    python bench/moe_routing.py [--tokens 16384] [--experts 64] [--top-k 8] [--d-model 2048]
                                [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from triforge.kernels.moe_routing import combine, gating, permute


def cuda_ms(fn, calls: int = 10) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def cases(args) -> dict:
    t, e, k, d = args.tokens, args.experts, args.top_k, args.d_model
    logits = torch.randn(t, e, device="cuda", requires_grad=True)
    x = torch.randn(t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    slot = torch.randperm(t * k, device="cuda").view(t, k)
    gates = torch.rand(t, k, device="cuda", requires_grad=True)
    rows = torch.randn(t * k, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def run_gating(backend):
        _, g, p = gating(logits, None, top_k=k, score="softmax", renormalize=True,
                         backend=backend)
        (g.sum() + p.sum()).backward()

    def run_permute(backend):
        permute(x, slot, t * k, backend=backend).float().sum().backward()

    def run_combine(backend):
        combine(rows, gates, slot, backend=backend).sum().backward()

    return {"gating": run_gating, "permute": run_permute, "combine": run_combine}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("tokens", 16384), ("experts", 64), ("top-k", 8), ("d-model", 2048),
                          ("rounds", 5)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    print(f"{args.tokens} tokens, {args.experts} experts, top-{args.top_k}, d={args.d_model}, "
          f"bf16 rows, forward + backward, median of {args.rounds} rounds")
    print(f"{'op':<10}{'triton ms':>11}{'torch ms':>10}{'speedup':>9}")
    for name, fn in cases(args).items():
        times = {"triton": [], "reference": []}
        for r in range(args.rounds):
            for backend in (("triton", "reference") if r % 2 == 0 else ("reference", "triton")):
                times[backend].append(cuda_ms(lambda b=backend, f=fn: f(b)))
        ours, ref = statistics.median(times["triton"]), statistics.median(times["reference"])
        print(f"{name:<10}{ours:>11.3f}{ref:>10.3f}{ref / ours:>8.2f}x")


if __name__ == "__main__":
    main()
