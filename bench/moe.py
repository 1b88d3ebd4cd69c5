"""Throughput of the mixture-of-experts feed-forward: the grouped matmul vs the per-expert
loop vs a dense SwiGLU with as many active parameters, forward + backward, in one process.

The three layers alternate round by round (a burst of load on the machine then hits all of
them alike); each round times several calls and the table gives each layer's median
tokens/s and its ratio to the dense layer measured in the same rounds.

    python bench/moe.py [--experts 8] [--top-k 2] [--d-model 384] [--expert-hidden 512]
                        [--tokens 2048] [--dtype fp32|bf16] [--rounds 7] [--calls 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from triforge.launcher.config import load_config
from triforge.models.feed_forward import FeedForward
from triforge.models.moe.layer import MoEFeedForward
from triforge.models.side_outputs import BlockControls

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def layers(args) -> dict[str, torch.nn.Module]:
    hidden = args.expert_hidden
    moe = [f"model.d_model={args.d_model}", "model.n_heads=6", f"model.moe.num_experts="
           f"{args.experts}", f"model.moe.top_k={args.top_k}", f"model.moe.expert_hidden={hidden}"]
    grouped = load_config(["model=moe_small", *moe]).model
    loop = load_config(["model=moe_small", *moe, "model.moe.grouped_mm=false"]).model
    torch.manual_seed(0)
    out = {"grouped_mm": MoEFeedForward(grouped, BlockControls(), layer_id=0),
           "per_expert_loop": MoEFeedForward(loop, BlockControls(), layer_id=0),
           # the same active feed-forward parameters per token: top_k experts' worth
           "dense_equal_active": FeedForward(grouped, hidden=hidden * args.top_k)}
    for module in out.values():
        module.init_weights(0.02, 0.02)
        module.to(DTYPES[args.dtype]).train()
    out["per_expert_loop"].load_state_dict(out["grouped_mm"].state_dict())
    return out


def seconds_per_call(module: torch.nn.Module, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        module(x).float().pow(2).mean().backward()
        module.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("experts", 8), ("top-k", 2), ("d-model", 384),
                          ("expert-hidden", 512), ("tokens", 2048), ("rounds", 7),
                          ("calls", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    args = parser.parse_args()
    modules = layers(args)
    x = torch.randn(1, args.tokens, args.d_model, dtype=DTYPES[args.dtype])
    for module in modules.values():
        seconds_per_call(module, x, 1)  # warm up
    times: dict[str, list[float]] = {name: [] for name in modules}
    for r in range(args.rounds):
        names = list(modules) if r % 2 == 0 else list(reversed(modules))
        for name in names:
            times[name].append(seconds_per_call(modules[name], x, args.calls))
    dense = statistics.median(times["dense_equal_active"])
    print(f"{args.experts} experts top-{args.top_k}, d={args.d_model}, expert hidden "
          f"{args.expert_hidden}, {args.tokens} tokens, {args.dtype}, forward + backward, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print(f"{'layer':<20}{'tokens/s':>12}{'vs dense':>10}{'min..max ms':>16}")
    for name, samples in times.items():
        med = statistics.median(samples)
        spread = f"{min(samples) * 1e3:.1f}..{max(samples) * 1e3:.1f}"
        print(f"{name:<20}{args.tokens / med:>12,.0f}{dense / med:>10.2f}{spread:>16}")


if __name__ == "__main__":
    main()
