"""The Triton attention kernel against the float64 reference, forward and backward.

Tolerance rule (STYLE.md §10): the kernel's max abs error against float64 is at most twice the
error of attention_reference computed in the input dtype (upcast=False), plus a floor of
FLOOR_FP32_ULPS fp32 ulps at the magnitude of the compared tensor (its max abs, at least 1:
inputs are unit normal, and a gradient that is exactly 0, like dQ at seq 1, is still computed
as a difference of O(1) terms). The floor is the fp32 noise any tiled kernel has: another
summation order, and P recomputed in the backward from the stored log-sum-exp (~|lse| ulps in
P). It is negligible for bf16/fp16, whose PyTorch baseline rounds every intermediate to 8/11
bits, and matters for fp32 inputs only, where both errors are a few ulps (over 64 random fp32
cases the kernel exceeded 2x PyTorch's error by at most 3.0 such ulps, in dK).
Outputs and grads are NaN-poisoned by the launchers (torch.full(nan)), so an element a kernel
fails to write fails the comparison.
Without a GPU this runs under TRITON_INTERPRET=1 (see conftest.py); the whole file takes
about two minutes on two cores.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from triforge.kernels.attention import AttentionMask, attention_reference, dense_mask  # noqa: E402
from triforge.kernels.attention.op import flash_attention  # noqa: E402
from triforge.kernels.attention.tiles import tile_loop_bounds  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FLOOR_FP32_ULPS = 4.0
NAMES = ("out", "dq", "dk", "dv")


@dataclass(frozen=True)
class Case:
    kind: str  # causal | full | prefix
    docs: str  # "" | "packed" (non-decreasing ids) | "random" (arbitrary ids)
    dtype: torch.dtype
    shape: tuple[int, int, int, int, int]  # batch, q heads, kv heads, seq, head_dim

    def __str__(self) -> str:
        b, hq, hkv, s, d = self.shape
        dt = str(self.dtype).removeprefix("torch.")
        return f"{self.kind}{'+' + self.docs if self.docs else ''}-{dt}-b{b}h{hq}kv{hkv}s{s}d{d}"


S1, GQA2, GQA4_S100, S257, GQA2_S100, GQA4_S257 = (
    (1, 1, 1, 1, 32), (2, 4, 2, 17, 32), (3, 2, 1, 100, 64),
    (1, 2, 2, 257, 64), (2, 4, 2, 100, 32), (1, 4, 1, 257, 32),
)  # fmt: skip
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
# A covering set, not the cross product: every mask mode x {fp32, bf16} on 2-3 shapes, odd
# shapes first; seq 257 in six cases; GQA groups 2 and 4.
CASES = [
    Case("causal", "", F32, S1), Case("causal", "", F32, GQA2), Case("causal", "", F32, GQA4_S257),
    Case("full", "", F32, GQA2), Case("full", "", F32, GQA4_S100),
    Case("prefix", "", F32, GQA2_S100), Case("prefix", "", F32, S257),
    Case("causal", "packed", F32, GQA2), Case("causal", "packed", F32, GQA4_S100),
    Case("full", "packed", F32, GQA2_S100), Case("full", "packed", F32, S257),
    Case("full", "random", F32, GQA2),
    Case("prefix", "packed", F32, GQA4_S100), Case("prefix", "packed", F32, GQA2),
    Case("causal", "", BF16, GQA2), Case("causal", "", BF16, S257),
    Case("full", "", BF16, S1), Case("full", "", BF16, GQA2_S100),
    Case("prefix", "", BF16, GQA2), Case("prefix", "", BF16, GQA4_S100),
    Case("causal", "packed", BF16, GQA2_S100), Case("causal", "packed", BF16, GQA4_S257),
    Case("full", "packed", BF16, GQA4_S100), Case("full", "packed", BF16, GQA2),
    Case("prefix", "packed", BF16, GQA2_S100), Case("prefix", "packed", BF16, S257),
    Case("causal", "", F16, GQA4_S100), Case("full", "packed", F16, GQA2),
    Case("causal", "packed", BF16, (2, 2, 1, 65, 128)),
    Case("prefix", "", F32, (1, 2, 1, 33, 40)),  # head_dim padded to 64 inside the kernel
]  # fmt: skip


def make_mask(kind: str, docs: str, batch: int, seq: int, gen: torch.Generator) -> AttentionMask:
    """Prefix lengths cycle through 0, seq // 3 and seq + 7 (longer than the sequence)."""
    prefix = None
    if kind == "prefix":
        prefix = torch.tensor([(0, seq // 3, seq + 7)[i % 3] for i in range(batch)])
    doc_ids = None
    if docs:
        doc_ids = torch.randint(0, 4, (batch, seq), generator=gen)
        if docs == "packed":  # packed windows: ids never decrease along the sequence
            doc_ids = doc_ids.sort(dim=1).values
    return AttentionMask(kind, prefix_len=prefix, doc_ids=doc_ids)


def make_inputs(case: Case, gen: torch.Generator):
    b, hq, hkv, s, d = case.shape
    q, k, v, dout = (
        torch.randn(shape, generator=gen).to(case.dtype)
        for shape in ((b, hq, s, d), (b, hkv, s, d), (b, hkv, s, d), (b, hq, s, d))
    )
    return q, k, v, dout, make_mask(case.kind, case.docs, b, s, gen)


def forward_backward(fn, q, k, v, dout, mask, *, scale=None, **kwargs):
    """(out, dq, dk, dv) of ``fn``, with the inputs as leaves on DEVICE."""
    leaves = [t.detach().to(DEVICE).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, mask, scale=scale, **kwargs)
    grads = torch.autograd.grad(out, leaves, dout.to(DEVICE, out.dtype))
    return (out.detach(), *grads)


def _mask_on(mask: AttentionMask, device) -> AttentionMask:
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return AttentionMask(mask.kind, prefix_len=move(mask.prefix_len), doc_ids=move(mask.doc_ids))


def error_report(q, k, v, dout, mask, *, scale=None) -> dict[str, tuple[float, float]]:
    """name -> (kernel error, allowed bound) for out, dq, dk, dv; also checks dtypes."""
    dev_mask = _mask_on(mask, DEVICE)
    ours = forward_backward(flash_attention, q, k, v, dout, dev_mask, scale=scale)
    exact = forward_backward(
        attention_reference, *(t.double() for t in (q, k, v, dout)), dev_mask, scale=scale
    )
    same_dtype = forward_backward(
        attention_reference, q, k, v, dout, dev_mask, scale=scale, upcast=False
    )
    for got, inp in zip(ours, (q, q, k, v), strict=True):
        assert got.dtype == inp.dtype and got.shape == inp.shape
    eps = torch.finfo(torch.float32).eps
    report = {}
    for name, got, ref, base in zip(NAMES, ours, exact, same_dtype, strict=True):
        err = (got.double() - ref).abs().max().item()
        torch_err = (base.double() - ref).abs().max().item()
        floor = FLOOR_FP32_ULPS * eps * max(1.0, ref.abs().max().item())
        report[name] = (err, 2 * torch_err + floor)
    return report


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_float64_reference(case: Case):
    gen = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))
    report = error_report(*make_inputs(case, gen))
    bad = {n: f"{e:.3g} > {b:.3g}" for n, (e, b) in report.items() if not e <= b}  # NaN fails
    assert not bad, f"{case}: kernel error above 2x torch-{case.dtype} error + floor: {bad}"


def test_strided_inputs_and_scale():
    """q, k, v as transposed (b, s, h, d) views (no copy made) and an explicit scale."""
    gen = torch.Generator().manual_seed(1)
    b, s, hq, hkv, d = 2, 40, 4, 2, 32
    q = torch.randn(b, s, hq, d, generator=gen).transpose(1, 2)
    k, v = (torch.randn(b, s, hkv, d, generator=gen).transpose(1, 2) for _ in range(2))
    dout = torch.randn(b, hq, s, d, generator=gen).transpose(2, 3).contiguous().transpose(2, 3)
    mask = make_mask("prefix", "packed", b, s, gen)
    report = error_report(q, k, v, dout, mask, scale=0.37)
    assert all(e <= bound for e, bound in report.values()), report


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the interpreter runs programs in order")
def test_backward_is_deterministic():
    gen = torch.Generator().manual_seed(2)
    q, k, v, dout, mask = make_inputs(Case("causal", "packed", BF16, GQA2), gen)
    first = forward_backward(flash_attention, q, k, v, dout, _mask_on(mask, DEVICE))
    second = forward_backward(flash_attention, q, k, v, dout, _mask_on(mask, DEVICE))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def _mask_batch(mask: AttentionMask) -> int:
    for t in (mask.prefix_len, mask.doc_ids):
        if t is not None:
            return t.shape[0]
    return 1


def _tile_any_all(mask: AttentionMask, seq: int, bq: int, bk: int):
    """Exact per-tile (any allowed, all allowed) from the dense mask, padded tiles included."""
    dense = dense_mask(mask, _mask_batch(mask), seq, seq, "cpu")[:, 0]
    nq, nk = -(-seq // bq), -(-seq // bk)
    padded = torch.zeros(dense.shape[0], nq * bq, nk * bk, dtype=torch.bool)
    padded[:, :seq, :seq] = dense
    tiles = padded.view(-1, nq, bq, nk, bk).transpose(2, 3)
    return tiles.any((-1, -2)), tiles.all((-1, -2))


@pytest.mark.parametrize("kind", ["causal", "full", "prefix"])
@pytest.mark.parametrize("docs", ["", "packed", "random"])
@pytest.mark.parametrize("seq,bq,bk", [(257, 16, 32), (100, 32, 16), (64, 16, 16)])
def test_tile_bounds_skip_exactly_the_empty_tiles(kind, docs, seq, bq, bk):
    """Loops cover every tile with an allowed pair; the unmasked run holds only fully allowed
    tiles; unless doc ids are arbitrary (not packed), no fully masked tile is visited at all."""
    mask = make_mask(kind, docs, 3, seq, torch.Generator().manual_seed(seq))
    any_, all_ = _tile_any_all(mask, seq, bq, bk)
    for outer, inner_block in (("query", bk), ("key", bq)):
        bounds = tile_loop_bounds(mask, seq, seq, bq, bk, outer=outer, device="cpu") // inner_block
        exact_any, exact_all = (any_, all_) if outer == "query" else (any_.mT, all_.mT)
        bounds = bounds.expand(exact_any.shape[0], -1, -1)
        idx = torch.arange(exact_any.shape[-1])
        lo, ulo, uhi, hi = (bounds[..., i, None] for i in range(4))
        visited = (idx >= lo) & (idx < hi)
        assert not (exact_any & ~visited).any(), "a tile with allowed pairs is skipped"
        unmasked = (idx >= ulo) & (idx < uhi)
        assert not (unmasked & ~exact_all).any(), "a partly masked tile skips the mask"
        if docs != "random":
            assert torch.equal(visited, exact_any), "a fully masked tile is visited"


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the rows that read NaN
def test_kernels_do_not_read_skipped_tiles():
    """NaN in data that only skipped tiles would touch must not reach the results (0 * NaN is
    NaN, so a visited-but-masked tile would leak it). Causal, seq 64, CPU tiles: forward 16x16,
    dK/dV 32-key tiles over 16-query tiles, dQ 32-query tiles over 16-key tiles."""
    if DEVICE.type == "cuda":
        pytest.skip("the tile geometry below assumes the interpreter's tile sizes")
    gen = torch.Generator().manual_seed(3)
    q, k, v, dout = (torch.randn(1, 1, 64, 32, generator=gen) for _ in range(4))
    mask = AttentionMask("causal")
    # Keys 32..63: never visited by the forward's query tiles 0-1 nor dQ's query tile 0.
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, :, 32:], v_bad[:, :, 32:] = float("nan"), float("nan")
    out, dq, _, _ = forward_backward(flash_attention, q, k_bad, v_bad, dout, mask)
    head = forward_backward(attention_reference, *(t[:, :, :32] for t in (q, k, v, dout)), mask)
    torch.testing.assert_close(out[:, :, :32], head[0])
    torch.testing.assert_close(dq[:, :, :32], head[1])
    # dO rows 0..15: never visited by the dK/dV key tile 1 (keys 32..63).
    dout_bad = dout.clone()
    dout_bad[:, :, :16] = float("nan")
    _, _, dk, dv = forward_backward(flash_attention, q, k, v, dout_bad, mask)
    dout_zero = dout_bad.nan_to_num(0.0)
    ref = forward_backward(attention_reference, q, k, v, dout_zero, mask)
    torch.testing.assert_close(dk[:, :, 32:], ref[2][:, :, 32:])
    torch.testing.assert_close(dv[:, :, 32:], ref[3][:, :, 32:])


def test_rejects_document_ids_short_of_the_positions():
    """Queries and keys may have other lengths and positions (tests/kernels/
    test_attention_blocks.py), but document ids must cover every position they sit at."""
    q, k = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 12, 16)
    mask = AttentionMask("causal", doc_ids=torch.zeros(1, 12, dtype=torch.long), q_start=8)
    with pytest.raises(AssertionError, match=r"doc_ids must cover positions 0\.\.15"):
        flash_attention(q, k, k, mask)
