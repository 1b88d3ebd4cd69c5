"""Ring attention across real processes: every cp rank's output and gradients of its chunks
equal the unsplit attention's, for every mask mode, both transports (p2p, allgather), cp 2
and 4, on gloo. The math alone is checked in one process (tests/kernels/
test_attention_blocks.py); here key/value chunks and their gradients really travel, so a
chunk sent to the wrong rank, a gradient that does not come home, or a mismatched message
fails. Tolerance as there: fp32, RING_ULPS * cp ulps at the tensor's magnitude.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.helpers.attention import RING_ULPS
from tests.helpers.attention import sequence_mask as _mask
from tests.helpers.spawn import spawn_ranks
from triforge.kernels.attention import attention_reference
from triforge.parallel.context_parallel import CP_COMMS, RingAttentionCore, shard_sequence

MASKS = [("causal", False), ("causal", True), ("full", True), ("prefix", False),
         ("prefix", True)]
# The interpreted kernel is slow: two masks with document ids cover its ring on processes
# (every mode of it is checked in one process).
TRITON_MASKS = [("causal", True), ("prefix", True)]


def _check_ring(rank: int, world: int, backend: str) -> None:
    eps = torch.finfo(torch.float32).eps
    for kind, docs in TRITON_MASKS if backend == "triton" else MASKS:
        gen = torch.Generator().manual_seed(len(kind) * 7 + docs)  # the same on every rank
        b, hq, hkv, seq, d = 2, 4, 2, 8 * world, 16
        q, dout = (torch.randn(b, hq, seq, d, generator=gen, dtype=torch.float64)
                   for _ in range(2))
        k, v = (torch.randn(b, hkv, seq, d, generator=gen, dtype=torch.float64)
                for _ in range(2))
        mask = _mask(kind, docs, b, seq, gen)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        attention_reference(*leaves, mask).backward(dout)
        exact = [attention_reference(q, k, v, mask), *(t.grad for t in leaves)]
        for comm in CP_COMMS:
            core = RingAttentionCore(backend=backend, group=dist.group.WORLD, cp=world,
                                     rank=rank, comm=comm)
            mine = [shard_sequence(t.float(), world, rank, dim=2).requires_grad_()
                    for t in (q, k, v)]
            out = core(*mine, mask)
            out.backward(shard_sequence(dout.float(), world, rank, dim=2))
            for name, got, ref in zip(("out", "dq", "dk", "dv"),
                                      [out.detach(), *(t.grad for t in mine)], exact,
                                      strict=True):
                ref = shard_sequence(ref, world, rank, dim=2)
                err = (got.double() - ref).abs().max().item()
                bound = RING_ULPS * world * eps * max(1.0, ref.abs().max().item())
                assert err <= bound, f"{kind} docs={docs} {comm} {name}: {err:.2e} > {bound:.2e}"


@pytest.mark.distributed
@pytest.mark.parametrize("world,backend", [(2, "sdpa"), (4, "sdpa"), (2, "triton")])
def test_ring_attention_over_processes_matches_unsplit(world, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    spawn_ranks(_check_ring, world, backend)
