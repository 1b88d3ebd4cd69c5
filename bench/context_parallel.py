"""Context parallelism: activation memory per rank and ring traffic, on gloo processes.

1. Activation memory: bytes autograd saves for backward in one forward of a model whose
   attention is the ring (parallel/context_parallel.py), on cp rank 0's chunks, for cp 1, 2, 4
   and several sequence lengths (the weights, which linear layers save as views, left out).
   Every saved tensor is per token, so it must fall as 1/cp.
2. Traffic: bytes that really crossed the loopback interface (``/proc/net/dev``, all ranks
   together, TCP/IP headers included) during ring attention's forward and backward, against
   the analytic ring volume. Per rank, with KV the bytes of its stacked keys and values and
   dKV those of their fp32 gradients: ``p2p`` sends (cp - 1) KV forward, (cp - 1) KV + cp dKV
   backward; ``allgather`` moves (cp - 1) KV per all-gather (one forward, one backward) and
   (cp - 1) dKV in the all-to-all of the gradients.

    python -m bench.context_parallel [--d-model 256] [--layers 4] [--seqs 512,1024,2048]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

from tests.helpers.spawn import spawn_ranks
from triforge.kernels.attention import AttentionMask
from triforge.models import ModelConfig, build_model, materialize
from triforge.parallel.activation_checkpoint import saved_activation_bytes
from triforge.parallel.context_parallel import (
    CP_COMMS,
    RingAttentionCore,
    local_positions,
    shard_sequence,
)

VOCAB = 320


def _ring_model(cfg: ModelConfig, rank: int, cp: int):
    model = materialize(build_model(cfg, vocab_size=VOCAB, attention_backend="sdpa"), "cpu",
                        seed=0)
    for block in model.layers.values():
        block.attention.core = RingAttentionCore(backend="sdpa", group=dist.group.WORLD,
                                                 cp=cp, rank=rank, comm="p2p")
    return model


def _memory(rank: int, cp: int, cfg: ModelConfig, seqs: list[int], out: Path) -> None:
    model = _ring_model(cfg, rank, cp)
    rows = {}
    for seq in seqs:
        tokens = torch.randint(0, VOCAB, (1, seq), generator=torch.Generator().manual_seed(0))
        mine = shard_sequence(tokens, cp, rank)
        positions = local_positions(seq, cp, rank)
        rows[seq] = saved_activation_bytes(lambda: model(mine, positions=positions),  # noqa: B023
                                           exclude=list(model.parameters()))
    if rank == 0:
        out.write_text(json.dumps(rows))


def _lo_tx_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[8])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def _traffic(rank: int, cp: int, comm: str, shape: tuple, repeats: int, out: Path) -> None:
    b, h, seq, d = shape
    gen = torch.Generator().manual_seed(rank)
    q, k, v, dout = (torch.randn(b, h, seq // cp, d, generator=gen) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    core = RingAttentionCore(backend="sdpa", group=dist.group.WORLD, cp=cp, rank=rank,
                             comm=comm)
    causal = AttentionMask("causal")
    core(*leaves, causal).backward(dout)  # warm-up: connections, buffers
    dist.barrier()
    before = _lo_tx_bytes()
    for _ in range(repeats):
        core(*leaves, causal).backward(dout)
    dist.barrier()
    moved = (_lo_tx_bytes() - before) / repeats
    if rank == 0:
        out.write_text(json.dumps(moved))


def analytic_ring_bytes(cp: int, comm: str, kv_bytes: int) -> float:
    """All ranks' bytes for one forward and backward (fp32: dKV bytes = KV bytes)."""
    if comm == "p2p":
        per_rank = (cp - 1) * kv_bytes * 2 + cp * kv_bytes
    else:
        per_rank = 2 * (cp - 1) * kv_bytes + (cp - 1) * kv_bytes
    return cp * per_rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seqs", default="512,1024,2048")
    parser.add_argument("--traffic-seq", type=int, default=8192)
    args = parser.parse_args()
    seqs = [int(s) for s in args.seqs.split(",")]
    cfg = ModelConfig(name="bench", d_model=args.d_model, n_layers=args.layers, n_heads=4,
                      max_seq_len=max(seqs))
    tmp = Path("/tmp") / f"triforge-cp-bench-{torch.randint(0, 10**9, ()).item()}.json"
    memory = {}
    for cp in (1, 2, 4):
        spawn_ranks(_memory, cp, cfg, seqs, tmp)
        memory[cp] = {int(s): v for s, v in json.loads(tmp.read_text()).items()}
    print("activation bytes saved for backward, cp rank 0 (ratio to cp=1; ideal 1/cp)")
    print(f"{'seq':>6} " + " ".join(f"{'cp' + str(cp):>22}" for cp in memory))
    for seq in seqs:
        cells = [f"{memory[cp][seq] / 2**20:10.2f} MiB ({memory[cp][seq] / memory[1][seq]:.3f})"
                 for cp in memory]
        print(f"{seq:>6} " + " ".join(f"{c:>22}" for c in cells))
    shape, repeats = (1, 8, args.traffic_seq, 64), 3
    print(f"\nring traffic per forward+backward, all ranks, q/k/v {shape} fp32 (loopback bytes)")
    for cp in (2, 4):
        kv_bytes = 2 * shape[0] * shape[1] * (shape[2] // cp) * shape[3] * 4
        for comm in CP_COMMS:
            spawn_ranks(_traffic, cp, comm, shape, repeats, tmp)
            moved = json.loads(tmp.read_text())
            expected = analytic_ring_bytes(cp, comm, kv_bytes)
            print(f"cp{cp} {comm:>9}: measured {moved / 2**20:8.2f} MiB, analytic "
                  f"{expected / 2**20:8.2f} MiB, ratio {moved / expected:.3f}")
    tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
