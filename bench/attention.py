"""Benchmark our Triton attention against torch SDPA (flash backend) and flash-attn.

    python bench/attention.py            # full sweep, one H100/H200: about 3-4 minutes
    python bench/attention.py --quick    # tiny sweep; on a CPU-only machine an interpreter smoke run

Each row: batch x heads x seq x head_dim with batch * seq = --tokens and heads * head_dim =
--hidden (so every row moves the same activations), causal and full masks, bf16. Reported:
forward and forward+backward TFLOP/s (4*b*h*s*s*d for the forward, halved for causal, 2.5x
that for fwd+bwd), the ratios ours/flash-attn and ours/sdpa, and the largest difference of our
output and gradients from SDPA's on the same inputs, relative to SDPA's max abs value.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

# Relative max difference from SDPA we accept in bf16 (a few bf16 ulps, 2^-8 = 0.4% each).
MAX_REL_DIFF = 2e-2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sweep (smoke test)")
    p.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--tokens", type=int, default=16384, help="batch * seq for every row")
    p.add_argument("--hidden", type=int, default=2048, help="heads * head_dim for every row")
    return p.parse_args(argv)


def attention_flops(b: int, h: int, s: int, d: int, *, causal: bool, backward: bool) -> float:
    flops = 4.0 * b * h * s * s * d / (2 if causal else 1)
    return flops * (2.5 if backward else 1.0)


def implementations(causal: bool) -> dict:
    """name -> fn(q, k, v) on (b, s, h, d) tensors, returning (b, s, h, d)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from triforge.kernels.attention import AttentionMask
    from triforge.kernels.attention.op import flash_attention

    mask = AttentionMask("causal" if causal else "full")

    def ours(q, k, v):
        return flash_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask
        ).transpose(1, 2)

    def sdpa(q, k, v):
        backends = [SDPBackend.FLASH_ATTENTION] if q.is_cuda else [SDPBackend.MATH]
        with sdpa_kernel(backends):
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
            )
        return out.transpose(1, 2)

    impls = {"ours": ours, "sdpa": sdpa}
    try:
        from flash_attn import flash_attn_func

        impls["flash_attn"] = lambda q, k, v: flash_attn_func(q, k, v, causal=causal)
    except ImportError:
        pass
    return impls


def time_ms(fn, *, device: torch.device, grads: list[torch.Tensor]) -> float:
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grads)
    fn()  # interpreter smoke run: one call, wall clock, meaningless as a speed
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def measure(impl, q, k, v, dout) -> tuple[float, float]:
    """(forward ms, forward+backward ms)."""
    grads = [q, k, v]

    def fwd():
        with torch.no_grad():
            impl(q, k, v)

    def fwd_bwd():
        impl(q, k, v).backward(dout)

    return time_ms(fwd, device=q.device, grads=grads), time_ms(
        fwd_bwd, device=q.device, grads=grads
    )


def max_rel_diff(impl, base, q, k, v, dout) -> float:
    """Largest |impl - base| over out, dq, dk, dv, each relative to max |base|."""
    results = []
    for fn in (impl, base):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        results.append((out.detach(), *torch.autograd.grad(out, leaves, dout)))
    return max(
        ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()
        for a, b in zip(*results, strict=True)
    )


def run_row(b: int, h: int, s: int, d: int, *, causal: bool, device) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, dout = (
        torch.randn(b, s, h, d, device=device, dtype=torch.bfloat16, generator=gen)
        for _ in range(4)
    )
    for t in (q, k, v):
        t.requires_grad_()
    impls = implementations(causal)
    row = {"shape": f"{b}x{h}x{s}x{d}", "mask": "causal" if causal else "full"}
    for name, impl in impls.items():
        fwd_ms, fwd_bwd_ms = measure(impl, q, k, v, dout)
        row[f"{name}_fwd"] = (
            attention_flops(b, h, s, d, causal=causal, backward=False) / fwd_ms / 1e9
        )
        row[f"{name}_fb"] = (
            attention_flops(b, h, s, d, causal=causal, backward=True) / fwd_bwd_ms / 1e9
        )
    row["diff"] = max_rel_diff(impls["ours"], impls["sdpa"], q, k, v, dout)
    return row


def print_table(rows: list[dict]) -> None:
    has_fa = "flash_attn_fwd" in rows[0]
    cols = ["ours", "sdpa"] + (["flash_attn"] if has_fa else [])
    head = f"{'b x h x s x d':>18} {'mask':>6} |" + "".join(
        f" {c + ' fwd':>14} {c + ' f+b':>14}" for c in cols
    )
    head += " | ours/sdpa f, f+b" + (" | ours/fa f, f+b" if has_fa else "") + " | diff vs sdpa"
    print("TFLOP/s (bf16)\n" + head + "\n" + "-" * len(head))
    for r in rows:
        line = f"{r['shape']:>18} {r['mask']:>6} |" + "".join(
            f" {r[c + '_fwd']:14.1f} {r[c + '_fb']:14.1f}" for c in cols
        )
        line += f" | {r['ours_fwd'] / r['sdpa_fwd']:5.2f} {r['ours_fb'] / r['sdpa_fb']:5.2f}      "
        if has_fa:
            line += f" | {r['ours_fwd'] / r['flash_attn_fwd']:5.2f} {r['ours_fb'] / r['flash_attn_fb']:5.2f}    "
        flag = "ok" if r["diff"] <= MAX_REL_DIFF else "MISMATCH"
        print(line + f" | {r['diff']:.2e} {flag}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        if not args.quick:
            print(
                "bench/attention.py needs a CUDA GPU; use --quick for a CPU interpreter smoke run"
            )
            return 2
        # Must be set before the kernels are decorated, i.e. before op/triton are imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
        print("no CUDA: Triton interpreter smoke run, timings are meaningless")
        device, sweep = torch.device("cpu"), [(1, 2, 64, 32)]
    else:
        device = torch.device("cuda")
        seqs = [1024, 2048] if args.quick else args.seqs
        dims = [64] if args.quick else args.head_dims
        sweep = [(max(1, args.tokens // s), args.hidden // d, s, d) for d in dims for s in seqs]
    rows = [
        run_row(*shape, causal=causal, device=device) for shape in sweep for causal in (True, False)
    ]
    print_table(rows)
    return 0 if all(r["diff"] <= MAX_REL_DIFF for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
