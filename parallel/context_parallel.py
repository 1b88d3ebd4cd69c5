"""Context parallelism: every cp rank holds 1/cp of each sequence; attention runs as a ring.

Layout (head-tail load balancing, as in Megatron-Core): a sequence of S tokens is cut into
2 * cp chunks of c = S / (2 cp); rank r holds chunks r and 2 cp - 1 - r, so under a causal
mask every rank does the same work. Everything outside attention is per token, so the model
runs unchanged on a rank's 2c tokens given their global rotary positions (``shard_batch``);
the loss sums over dp x cp and FSDP shards over dp_shard x cp (parallel/dims.py).

Attention (``RingAttentionCore``, put in place of every ``Attention.core``): the key/value
chunks of all cp ranks visit each rank in turn; each visit computes the blocks (one query
chunk x one key chunk, both at their global positions, kernels/attention/blocks.py) that the
mask allows and merges them into the running output by log-sum-exp. The backward visits
again and passes each block the merged output and log-sum-exp; the key/value gradients
travel with their chunks and arrive at their owner after a full turn.

``parallel.cp_comm``: ``p2p`` sends each rank's keys and values to the next rank while the
current block computes (cp - 1 sends forward; cp - 1 sends plus cp gradient sends backward);
``allgather`` gathers all of them at once (one all-gather forward; backward one all-gather
and one all-to-all of the gradients), fewer and larger messages for small cp. Both work on
CPU (gloo) and CUDA (NCCL). The mask a ring receives is the whole sequence's (global
``doc_ids`` (b, S), ``prefix_len``): each rank slices what its blocks need, nothing extra
travels. PyTorch's own ``context_parallel`` handles only CUDA SDPA and none of our masks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from triforge.kernels.attention import AttentionMask
from triforge.kernels.attention.blocks import block_backward, block_forward, merge_blocks

CP_COMMS = ("p2p", "allgather")


def chunk_ids(cp: int, rank: int) -> tuple[int, int]:
    """The two sequence chunks (of 2 * cp) that cp rank ``rank`` holds, in local order."""
    return rank, 2 * cp - 1 - rank


def shard_sequence(t: torch.Tensor, cp: int, rank: int, dim: int = 1) -> torch.Tensor:
    """This rank's two chunks of ``t`` along ``dim`` (the whole sequence), concatenated."""
    chunks = t.chunk(2 * cp, dim=dim)
    return torch.cat([chunks[i] for i in chunk_ids(cp, rank)], dim=dim)


def local_positions(seq_len: int, cp: int, rank: int, device=None) -> torch.Tensor:
    """Global positions (2c,) of the tokens cp rank ``rank`` holds."""
    return shard_sequence(torch.arange(seq_len, device=device), cp, rank, dim=0)


def shard_batch(batch, cp: int, rank: int):
    """A ``Batch`` of whole sequences -> this cp rank's tokens of them: inputs, labels and
    rotary positions (0..S-1 when the batch had none) sharded, the mask kept whole (the
    ring reads its global document ids and prefix lengths)."""
    if cp == 1:
        return batch
    b, s = batch.inputs.shape
    positions = batch.positions
    if positions is None:
        positions = torch.arange(s, device=batch.inputs.device).expand(b, s)
    return dataclasses.replace(
        batch, inputs=shard_sequence(batch.inputs, cp, rank),
        labels=shard_sequence(batch.labels, cp, rank),
        positions=shard_sequence(positions, cp, rank).contiguous())


def check_context_parallel(*, cp: int, comm: str, seq_len: int, backend: str, compile: bool,
                           num_experts: int) -> None:
    """What ``parallel.cp > 1`` covers: dense models, every objective and mask, with data,
    tensor and pipeline parallelism; ValueError names what is not."""
    if comm not in CP_COMMS:
        raise ValueError(f"parallel.cp_comm='{comm}' is not one of {CP_COMMS}")
    if cp == 1:
        return
    if seq_len % (2 * cp):
        raise ValueError(f"parallel.cp({cp}) cuts each sequence into 2 * cp = {2 * cp} equal "
                         f"chunks: trainer.seq_len({seq_len}) must be divisible by {2 * cp}")
    ring_block_impl(backend, "cpu")  # flash_attn is refused
    if compile:
        raise ValueError(f"parallel.cp({cp}) is not covered by trainer.compile yet (the ring "
                         "communicates inside attention); use trainer.compile=false")
    if num_experts:
        raise ValueError(f"parallel.cp({cp}) covers dense models so far; mixture-of-experts "
                         "layers need parallel.cp=1")


@dataclass(frozen=True)
class RingMath:
    """The compute of one cp rank, independent of how key/value chunks travel."""

    cp: int
    rank: int
    impl: str  # kernels/attention/blocks.py: triton | torch
    scale: float

    def pairs(self, src: int, mask: AttentionMask, c: int):
        """(local query chunk, source key chunk, block mask) of every block that the mask
        may allow when the keys come from cp rank ``src``; causal blocks wholly above the
        diagonal are skipped (a prefix or document mask only removes more)."""
        out = []
        for a, qc in enumerate(chunk_ids(self.cp, self.rank)):
            for b, kc in enumerate(chunk_ids(self.cp, src)):
                if mask.kind == "causal" and kc > qc:
                    continue
                out.append((a, b, dataclasses.replace(mask, q_start=qc * c, k_start=kc * c)))
        return out

    def forward(self, q, kv_of, mask: AttentionMask):
        """Merged (out, lse) per local query chunk; ``kv_of(i)`` is (src, k, v) of visit i."""
        c = q.shape[2] // 2
        acc = [(None, None), (None, None)]
        for i in range(self.cp):
            src, k, v = kv_of(i)
            for a, b, block in self.pairs(src, mask, c):
                o, lse = block_forward(q[:, :, a * c:(a + 1) * c], k[:, :, b * c:(b + 1) * c],
                                       v[:, :, b * c:(b + 1) * c], block, scale=self.scale,
                                       impl=self.impl)
                acc[a] = merge_blocks(*acc[a], o, lse)
        # The visit of this rank's own keys gives each query chunk its diagonal block, so
        # no chunk is left without a result.
        return [(o.contiguous(), lse.contiguous()) for o, lse in acc]

    def backward_visit(self, dout, q, outs, src, k, v, mask: AttentionMask, dq: torch.Tensor):
        """Add the blocks against ``src``'s keys to ``dq`` (in place); return their dk, dv."""
        c = q.shape[2] // 2
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros_like(dk)
        for a, b, block in self.pairs(src, mask, c):
            rows, cols = slice(a * c, (a + 1) * c), slice(b * c, (b + 1) * c)
            out, lse = outs[a]
            dq_a, dk_b, dv_b = block_backward(
                dout[:, :, rows], q[:, :, rows], k[:, :, cols], v[:, :, cols], out, lse, block,
                scale=self.scale, impl=self.impl)
            dq[:, :, rows] += dq_a
            dk[:, :, cols] += dk_b
            dv[:, :, cols] += dv_b
        return dk, dv


_TAG_KV, _TAG_DKV = 1, 2  # keys/values and their gradients can be in flight together


class P2PRing:
    """Key/value chunks travel to the next cp rank while the current visit computes."""

    def __init__(self, group, cp: int, rank: int):
        self.group, self.cp, self.rank = group, cp, rank
        if cp > 1:  # cp = 1 (a baseline for benchmarks) sends nothing
            self.next = dist.get_global_rank(group, (rank + 1) % cp)
            self.prev = dist.get_global_rank(group, (rank - 1) % cp)

    def _exchange(self, send: torch.Tensor, tag: int):
        recv = torch.empty_like(send)
        ops = [dist.P2POp(dist.isend, send, self.next, self.group, tag),
               dist.P2POp(dist.irecv, recv, self.prev, self.group, tag)]
        return recv, dist.batch_isend_irecv(ops)

    def visits(self, kv: torch.Tensor):
        """Yield (source rank, its stacked k/v) for visits 0..cp-1, the next one in flight."""
        for i in range(self.cp):
            pending = self._exchange(kv, _TAG_KV) if i < self.cp - 1 else None
            yield (self.rank - i) % self.cp, kv
            if pending is not None:
                kv, works = pending
                _wait(works)

    def backward(self, kv: torch.Tensor, grads_of):
        """Run ``grads_of(src, kv) -> stacked dk/dv`` per visit; the sums travel with their
        chunks and after a full turn come home: returns this rank's stacked dk/dv."""
        incoming = None
        for src, kv_src in self.visits(kv):
            dkv = grads_of(src, kv_src)
            if incoming is not None:
                received, works = incoming
                _wait(works)
                dkv += received
            if self.cp == 1:
                return dkv
            incoming = self._exchange(dkv, _TAG_DKV)
        received, works = incoming
        _wait(works)
        return received


class AllGatherRing:
    """All key/value chunks gathered at once; each rank's gradients for every chunk go to
    the chunk's owner in one all-to-all and are summed there in rank order (the volume of a
    ring reduce-scatter, (cp - 1) gradient chunks per rank; gloo's reduce-scatter moves
    twice that, as an all-reduce)."""

    def __init__(self, group, cp: int, rank: int):
        self.group, self.cp, self.rank = group, cp, rank

    def _gather(self, kv: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(kv) for _ in range(self.cp)]
        dist.all_gather(parts, kv.contiguous(), group=self.group)
        return parts

    def visits(self, kv: torch.Tensor):
        parts = self._gather(kv)
        for i in range(self.cp):
            src = (self.rank - i) % self.cp
            yield src, parts[src]

    def backward(self, kv: torch.Tensor, grads_of):
        grads = [None] * self.cp
        for src, kv_src in self.visits(kv):
            grads[src] = grads_of(src, kv_src)
        sent = torch.stack(grads)
        received = torch.empty_like(sent)
        dist.all_to_all_single(received, sent, group=self.group)
        return received.sum(0)


def _wait(works) -> None:
    for work in works:
        work.wait()


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask: AttentionMask, math: RingMath, ring):
        with torch.autocast(q.device.type, enabled=False):
            kv = torch.stack([k, v])
            visits = ring.visits(kv)
            outs = math.forward(q, lambda i: _split(next(visits)), mask)
            for _ in visits:  # drain: the generator waits for its last transfer
                pass
        ctx.save_for_backward(q, k, v, *(t for pair in outs for t in pair))
        ctx.mask, ctx.math, ctx.ring = mask, math, ring
        return torch.cat([o for o, _ in outs], dim=2).to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out_a, lse_a, out_b, lse_b = ctx.saved_tensors
        outs = [(out_a, lse_a), (out_b, lse_b)]
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        with torch.autocast(q.device.type, enabled=False):
            def grads_of(src, kv_src):
                dk, dv = ctx.math.backward_visit(dout, q, outs, src, kv_src[0], kv_src[1],
                                                 ctx.mask, dq)
                return torch.stack([dk, dv])

            dkv = ctx.ring.backward(torch.stack([k, v]), grads_of)
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


def _split(visit):
    src, kv = visit
    return src, kv[0], kv[1]


def ring_block_impl(backend: str, device_type: str) -> str:
    """The block implementation behind ``attention.backend`` under context parallelism: the
    Triton kernels, or the same math in PyTorch (``sdpa``/``reference``, and ``auto`` off
    CUDA); flash-attn has no entry point for blocks at given positions."""
    if backend == "flash_attn":
        raise ValueError("parallel.cp > 1 runs attention as a ring of blocks, which "
                         "attention.backend=flash_attn cannot compute; use triton (CUDA) or sdpa")
    if backend == "triton" or (backend == "auto" and device_type == "cuda"):
        return "triton"
    return "torch"


class RingAttentionCore(nn.Module):
    """``Attention.core`` under context parallelism: ring attention over the cp group, on
    (b, heads, 2c, d) tensors of this rank's chunks and the whole sequence's mask."""

    def __init__(self, *, backend: str, group, cp: int, rank: int, comm: str):
        super().__init__()
        if comm not in CP_COMMS:
            raise ValueError(f"parallel.cp_comm='{comm}' is not one of {CP_COMMS}")
        self.backend, self.cp, self.rank = backend, cp, rank
        self.ring = (P2PRing if comm == "p2p" else AllGatherRing)(group, cp, rank)

    def forward(self, q_bhsd, k_bhsd, v_bhsd, mask: AttentionMask) -> torch.Tensor:
        if mask.is_offset:
            raise ValueError("ring attention takes the whole sequence's mask")
        math = RingMath(self.cp, self.rank, ring_block_impl(self.backend, q_bhsd.device.type),
                        1.0 / q_bhsd.shape[-1] ** 0.5)
        return _RingAttention.apply(q_bhsd, k_bhsd, v_bhsd, mask, math, self.ring)


def apply_cp(model: nn.Module, cp_mesh, *, comm: str) -> None:
    """Put a ring-attention core into every attention block of ``model`` (in place). The
    cores hold no parameters: checkpoints do not change."""
    group, rank = cp_mesh.get_group(), cp_mesh.get_local_rank()
    for block in model.layers.values():
        attention = block.attention
        attention.core = RingAttentionCore(backend=attention.core.backend, group=group,
                                           cp=cp_mesh.size(), rank=rank, comm=comm)
