"""RMSNorm implementations: memory kept for the backward (any machine) and time per call,
forward + backward (GPU), alternating the implementations in each round.

    python -m bench.rmsnorm [--tokens 16384] [--dims 2048 4096 8192] [--rounds 5]

On a CPU the Triton kernels run in the interpreter (TRITON_INTERPRET=1), so only the
memory column is measured there, on 1024 rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics

import torch

from bench.moe_routing import cuda_ms
from triforge.kernels.rmsnorm import rms_norm


def saved_bytes(impl: str, x: torch.Tensor, w: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of one norm beyond the input and the weight
    (each storage counted once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        rms_norm(x, w, 1e-5, impl=impl)
    for kept in (x, w):  # the input (kept by its producer) and the weight (a parameter)
        storages.pop(kept.untyped_storage().data_ptr(), None)
    return sum(storages.values())


def median_ms(impls: list[str], x, w, dy, rounds: int) -> dict[str, float]:
    """Forward + backward time of each implementation, alternating their order by round."""
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for r in range(rounds):
        for impl in impls if r % 2 == 0 else impls[::-1]:
            times[impl].append(cuda_ms(lambda i=impl: rms_norm(x, w, 1e-5, impl=i).backward(dy)))
    return {impl: statistics.median(t) for impl, t in times.items()}


def implementations(device: torch.device) -> list[str]:
    impls = ["torch", "triton"]
    if device.type == "cuda" and importlib.util.find_spec("fused_layer_norm_cuda"):
        impls.append("apex")
    return impls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton.jit runs (lazy import)
    device = torch.device("cuda" if cuda else "cpu")
    tokens = args.tokens if cuda else 1024
    impls = implementations(device)
    timing = "; ms: forward + backward, median" if cuda else ""
    print(f"{tokens} rows, bf16 activations, fp32 weight; saved: what autograd keeps for "
          f"the backward beyond the input and the weight{timing}")
    print(f"{'d':>6}{'impl':>8}{'saved MB':>10}" + (f"{'ms':>9}{'vs torch':>10}" if cuda else ""))
    for d in args.dims:
        x = torch.randn(tokens, d, device=device, dtype=torch.bfloat16, requires_grad=True)
        w = torch.ones(d, device=device, requires_grad=True)
        dy = torch.randn(tokens, d, device=device)
        times = median_ms(impls, x, w, dy, args.rounds) if cuda else {}
        for impl in impls:
            line = f"{d:>6}{impl:>8}{saved_bytes(impl, x, w) / 1e6:>10.3f}"
            if cuda:
                line += f"{times[impl]:>9.3f}{times['torch'] / times[impl]:>9.2f}x"
            print(line)


if __name__ == "__main__":
    main()
