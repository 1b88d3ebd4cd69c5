"""The Triton MoE routing kernels against their float64 reference, forward and backward.

Tolerance rule (STYLE.md §10): the kernel's max abs error against the float64 reference is
at most twice that of the PyTorch reference computed in the same dtype, plus one unit
roundoff of the dtype at the compared tensor's magnitude (for values the reference gets
exact). Indices and counts must be equal: the top-k choice is exact, ties to the lowest
expert index. Outputs are NaN-poisoned by the launchers, so an element a kernel misses
fails. Without a GPU the kernels run under TRITON_INTERPRET=1 (conftest.py).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from triforge.kernels.moe_routing import combine, gating, permute  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def within_rule(kernel: torch.Tensor, ref_same_dtype: torch.Tensor, exact: torch.Tensor,
                dtype: torch.dtype) -> bool:
    exact = exact.double()
    unit = torch.finfo(dtype).eps / 2 * max(exact.abs().max().item(), 1.0)
    bound = 2 * (ref_same_dtype.double() - exact).abs().max().item() + unit
    return (kernel.double() - exact).abs().max().item() <= bound


def leaf(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(DEVICE, dtype).clone().requires_grad_()


# tokens, experts, top_k, score, renormalize, bias, ties
GATING = [
    (13, 8, 1, "softmax", True, False, False), (13, 8, 2, "softmax", True, False, True),
    (1, 4, 4, "softmax", False, False, False), (257, 16, 4, "sigmoid", True, True, False),
    (64, 8, 8, "softmax", True, False, True), (31, 6, 2, "sigmoid", False, False, True),
    (100, 64, 8, "softmax", False, True, False), (5, 8, 1, "softmax", True, False, False),
]


def logits_for(tokens: int, experts: int, ties: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, experts, dtype=torch.float64, generator=g) * 2
    if ties:  # equal scores: whole columns, and a token with every expert equal
        logits[:, experts // 2] = logits[:, 0]
        logits[0] = 0.5
    return logits


@pytest.mark.parametrize("case", GATING, ids=lambda c: "-".join(map(str, c)))
def test_gating_matches_the_reference(case):
    tokens, experts, k, score, renorm, with_bias, ties = case
    logits = logits_for(tokens, experts, ties, seed=tokens * experts + k)
    bias = torch.linspace(-0.05, 0.05, experts, dtype=torch.float64) if with_bias else None
    g = torch.Generator().manual_seed(1)
    dgates, dprobs = torch.randn(tokens, k, generator=g), torch.randn(tokens, experts, generator=g)
    results = {}
    for name, dtype, backend in (("exact", torch.float64, "reference"),
                                 ("ref32", torch.float32, "reference"),
                                 ("kernel", torch.float32, "triton")):
        x = leaf(logits, dtype)
        b = None if bias is None else bias.to(DEVICE, dtype)
        top, gates, probs = gating(x, b, top_k=k, score=score, renormalize=renorm,
                                   backend=backend)
        ((gates * dgates.to(gates)).sum() + (probs * dprobs.to(probs)).sum()).backward()
        results[name] = (top.cpu(), gates.detach().cpu(), probs.detach().cpu(), x.grad.cpu())
    exact, ref32, kernel = results["exact"], results["ref32"], results["kernel"]
    assert torch.equal(kernel[0], exact[0]) and torch.equal(ref32[0], exact[0])
    for i, name in ((1, "gates"), (2, "probs"), (3, "dlogits")):
        assert within_rule(kernel[i], ref32[i], exact[i], torch.float32), name
    if ties:
        assert kernel[0][0].tolist() == list(range(k))  # all equal: the lowest indices


def test_gating_counts_include_experts_with_no_tokens():
    from triforge.kernels.moe_routing.op import gating_triton
    logits = torch.full((6, 8), -4.0, device=DEVICE)
    logits[:, 2], logits[:3, 5] = 3.0, 2.0  # experts 2 and 5 only (or the lowest index)
    top, _, _, counts = gating_triton(logits, None, top_k=2, score="softmax", renormalize=True)
    expect = torch.bincount(top.reshape(-1).cpu(), minlength=8)
    assert torch.equal(counts.cpu().long(), expect) and expect.tolist()[2] == 6
    assert (expect == 0).sum() >= 5


def slots(tokens: int, k: int, dropped: int, seed: int) -> tuple[torch.Tensor, int]:
    """A random assignment of the kept (token, j) pairs to rows 0..A-1, ``dropped`` of
    them -1."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.full((tokens * k,), -1, dtype=torch.int64)
    kept = torch.randperm(tokens * k, generator=g)[dropped:]
    flat[kept] = torch.randperm(kept.numel(), generator=g)
    return flat.view(tokens, k), kept.numel()


# tokens, k, features, dropped
MOVES = [(1, 1, 8, 0), (13, 2, 20, 3), (64, 4, 96, 0), (33, 8, 1030, 17), (7, 2, 5, 14)]


@pytest.mark.parametrize("case", MOVES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_permute_and_combine_match_the_reference(case, dtype):
    tokens, k, d, dropped = case
    slot, n_rows = slots(tokens, k, dropped, seed=tokens + d)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(tokens, d, dtype=torch.float64, generator=g)
    gates = torch.rand(tokens, k, dtype=torch.float64, generator=g)
    w = torch.randn(d, dtype=torch.float64, generator=g)  # rows * w: the experts stand-in
    dy = torch.randn(tokens, d, dtype=torch.float64, generator=g)
    results = {}
    for name, run_dtype, backend in (("exact", torch.float64, "reference"),
                                     ("ref", dtype, "reference"), ("kernel", dtype, "triton")):
        xi = leaf(x, run_dtype)
        gi = leaf(gates, torch.float64 if run_dtype == torch.float64 else torch.float32)
        s = slot.to(DEVICE)
        rows = permute(xi, s, n_rows, backend=backend)
        y = combine(rows * w.to(DEVICE, run_dtype), gi, s, backend=backend)
        (y * dy.to(y)).sum().backward()
        results[name] = (rows.detach().cpu(), y.detach().cpu(), xi.grad.cpu(), gi.grad.cpu())
    exact, ref, kernel = results["exact"], results["ref"], results["kernel"]
    assert torch.equal(kernel[0], ref[0])  # a permutation moves values, it computes nothing
    for i, name in ((1, "combined"), (2, "dx"), (3, "dgates")):
        assert within_rule(kernel[i], ref[i], exact[i], dtype), name
