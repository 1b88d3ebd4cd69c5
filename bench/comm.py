"""Bytes moved by collectives in one training step of each parallel mode, per rank, beside
the analytic minimum of that mode.

Every collective the step issues (FSDP's gathers and reductions, DTensor redistributions,
pipeline sends/receives, the trainer's own small reductions) is read from a profiler trace
of the step (c10d ops with their tensor shapes) and converted to the bytes a ring algorithm
moves per rank: all-reduce 2(n-1)/n B, all-gather and reduce-scatter (n-1)/n B of the full
buffer, point-to-point B.

    python bench/comm.py [--d-model 256] [--layers 4] [--batch 8] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
from collections import Counter
from pathlib import Path

import torch
import torch.multiprocessing as mp

MODES = {
    "ddp2": ["parallel.dp_replicate=2", "parallel.dp_shard=1"],
    "fsdp2": ["parallel.dp_shard=2"],
    "tp2": ["parallel.tp=2", "parallel.sequence_parallel=false"],
    "tp2_sp": ["parallel.tp=2"],
    "pp2": ["parallel.pp=2", "parallel.pp_schedule=1f1b"],
}


_ELEMENT_BYTES = {"float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2, "long int": 8,
                  "int": 4, "TensorList": 4}  # tensor lists: fp32 in this benchmark


def _numel(dims) -> int:
    if dims and isinstance(dims[0], list):  # a tensor list
        return sum(_numel(d) for d in dims)
    n = 1
    for d in dims:
        n *= d
    return n


def collective_bytes(trace_events: list[dict], world: int) -> Counter:
    """Per-rank bytes moved by each c10d op in a profiler trace (recorded with shapes).

    All-gather and reduce-scatter group sizes follow from their input/output sizes;
    all-reduces are taken over ``world`` ranks (true here: every mode uses one 2-way
    dimension). DTensor's functional collectives run on these c10d ops and are counted once.
    """
    moved: Counter = Counter()
    for ev in trace_events:
        name = ev.get("name", "")
        if not name.startswith("c10d::"):
            continue
        dims, types = ev["args"].get("Input Dims", []), ev["args"].get("Input type", [])
        size = _ELEMENT_BYTES.get(types[0] if types else "", 4)
        first = _numel(dims[0]) * size if dims else 0
        op = name.split("::")[1]
        if "allgather" in op:  # (output, input): the full buffer is the output
            n = _numel(dims[0]) // max(1, _numel(dims[1]))
            moved[op] += (n - 1) / n * first
        elif "reduce_scatter" in op:  # (output, input)
            full = _numel(dims[1]) * size
            n = _numel(dims[1]) // max(1, _numel(dims[0]))
            moved[op] += (n - 1) / n * full
        elif "allreduce" in op:
            moved[op] += 2 * (world - 1) / world * first
        elif op in ("send", "recv_", "broadcast_"):
            moved[op] += first
    return moved


def analytic(mode: str, params: int, bsh: int, layers: int, micro: int,
             n: int = 2) -> tuple[float, str]:
    """(bytes per rank, formula) of the mode's unavoidable communication (fp32); ``micro``
    microbatches per rank and step."""
    frac = (n - 1) / n
    if mode == "ddp2":
        return 2 * frac * 4 * params, "all-reduce grads once: 2(n-1)/n x grad bytes"
    if mode == "fsdp2":
        return ((2 * micro + 1) * frac * 4 * params,
                "AG params fwd + bwd per microbatch, RS grads once: (2m+1)(n-1)/n x param bytes")
    if mode.startswith("tp2"):
        return 4 * layers * 2 * frac * 4 * bsh, "4 all-reduces (2 fwd, 2 bwd) of b*s*h per layer"
    return 2 * 4 * bsh, "activations fwd + their grads bwd, b*s*h each, one stage boundary"


def worker(rank: int, port: int, mode: str, overrides: list[str], out: str) -> None:
    from triforge.launcher.build import build_trainer, pick_device
    from triforge.launcher.config import load_config
    from triforge.launcher.dist import init_distributed, leave_distributed
    from triforge.launcher.env import ProcessEnv
    from triforge.launcher.train import resolve_layout
    from triforge.parallel.context import ParallelContext
    from triforge.parallel.mesh import build_meshes

    env = ProcessEnv(rank=rank, world_size=2, master_port=port, source="bench")
    job = load_config([*overrides, *MODES[mode]])
    dims = resolve_layout(job, env)
    device = pick_device(job.trainer.device, env)
    init_distributed(env, device, timeout_s=300)
    ctx = ParallelContext(dims, build_meshes(dims, device.type), rank)
    trainer, _ = build_trainer(job, env, ctx, device, log=lambda *_: None)
    trainer.train_step()  # first step: pipeline shape inference, lazy optimizer state
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        trainer.train_step()
    trace = f"{out}.rank{rank}.trace.json"
    prof.export_chrome_trace(trace)
    if rank == 0:
        events = json.loads(Path(trace).read_text())["traceEvents"]
        Path(out).write_text(json.dumps(collective_bytes(events, world=2)))
    leave_distributed(0, all_ranks_done=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    from triforge.launcher.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            "model=small", f"model.d_model={args.d_model}", f"model.n_layers={args.layers}",
            "model.n_heads=4", f"model.max_seq_len={args.seq}", f"trainer.seq_len={args.seq}",
            f"trainer.batch_size={args.batch}", "trainer.micro_batch_size=2",
            "logging.wandb.enabled=false", "logging.progress_bar=false",
            "trainer.eval_every=0", "checkpoint.every=0", "checkpoint.save_at_end=false",
            "trainer.grad_clip=1.0", f"run.dir={tmp}/run",
        ]
        model = load_config(overrides).model
        params = model.num_params(model.padded_vocab(258))
        bsh = args.batch * args.seq * args.d_model
        print(f"model: {params / 1e6:.2f}M params, {args.layers} layers, b*s*h = {bsh:,}; "
              "bytes per rank, one optimizer step")
        print(f"{'mode':<8}{'measured':>14}{'analytic':>14}{'ratio':>8}  breakdown")
        for mode in MODES:
            out = f"{tmp}/{mode}.json"
            mp.spawn(worker, args=(free_port(), mode, overrides, out), nprocs=2, join=True)
            measured = json.loads(Path(out).read_text())
            total = sum(measured.values())
            micro = args.batch // (2 if mode in ("ddp2", "fsdp2") else 1) // 2
            minimum, formula = analytic(mode, params, bsh, args.layers, micro)
            parts = ", ".join(f"{k} {v / 1e6:.2f}MB" for k, v in sorted(measured.items()))
            print(f"{mode:<8}{total / 1e6:>12.2f}MB{minimum / 1e6:>12.2f}MB"
                  f"{total / minimum:>8.2f}  {parts}  [{formula}]")


if __name__ == "__main__":
    main()
