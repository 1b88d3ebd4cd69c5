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
    # FSDP over the dense parameters, the experts split over the 2 ranks (all-to-all)
    "ep2": ["parallel.dp_shard=2", "parallel.ep=2", "model.moe.num_experts=4",
            "model.moe.top_k=2", "model.moe.expert_hidden=512"],
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


def collective_bytes(trace_events: list[dict], world: int, rank: int = 0) -> Counter:
    """Per-rank bytes moved by each c10d op in a profiler trace (recorded with shapes).

    All-gather and reduce-scatter group sizes follow from their input/output sizes;
    all-reduces are taken over ``world`` ranks (true here: every mode uses one 2-way
    dimension). An all-to-all moves the rows of its input split that go to other ranks (the
    split sizes are in the trace); without splits, an even split. DTensor's functional
    collectives run on these c10d ops and are counted once.
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
        elif op == "alltoall_base_":  # (output, input, ..., output splits, input splits)
            full = _numel(dims[1]) * size
            splits = json.loads(ev["args"]["Concrete Inputs"][4] or "[]")
            rows = _numel(dims[1]) // max(1, dims[1][0]) if dims[1] else 0
            own = splits[rank] * rows * size if splits else full / world
            moved["alltoall_base_"] += full - own
    return moved


def routing_counts(trainer, world: int) -> dict:
    """Rows this rank's MoE layers sent to each rank's experts in the last step, and the
    number of layer forwards, from the routing counts the layers recorded
    (models/moe/layer.py), not from the collectives."""
    from triforge.trainer.moe_balance import moe_layers

    per_owner, forwards, experts = [0] * world, 0, 0
    for layer in moe_layers(trainer.parts):
        experts = layer.router.num_experts
        for record in layer.records:
            counts = record[:experts].view(world, -1).sum(dim=1)
            per_owner = [a + int(b) for a, b in zip(per_owner, counts.tolist(), strict=True)]
            forwards += 1
    return {"rows_to": per_owner, "forwards": forwards, "experts": experts}


def analytic_fsdp(params: int, root: int, micro: int, n: int = 2) -> tuple[float, str]:
    """FSDP's volume over ``params`` fp32 parameters (the ep2 mode's dense part), ``root`` of
    them the root's (embedding, final norm, head): blocks gathered in forward and backward
    per microbatch, the root once per microbatch, gradients reduce-scattered once."""
    blocks = params - root
    return ((n - 1) / n * 4 * (2 * micro * blocks + micro * root + params),
            "AG blocks fwd + bwd and root once per microbatch, RS grads once")


FORMULAS = {"ddp2": "all-reduce fp32 grads once", "fsdp2": "plan/comm.py: AG blocks 2m, "
            "root m, RS once", "tp2": "plan/comm.py: (4 per layer + 2) all-reduces of b*s*h",
            "tp2_sp": "plan/comm.py: AG + RS per all-reduce, same bytes",
            "pp2": "plan/comm.py: activation + gradient per microbatch and boundary"}


def planned(mode: str, overrides: list[str]) -> float:
    """The planner's bytes per step for rank 0 of ``mode`` (plan/comm.py), all dimensions."""
    from triforge.launcher.config import load_config
    from triforge.plan.comm import comm_bytes
    from triforge.plan.layout import layout_from_job, workload_from_job

    job = load_config([*overrides, *MODES[mode]])
    return sum(comm_bytes(workload_from_job(job), layout_from_job(job, 2)).values())


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
    events = json.loads(Path(trace).read_text())["traceEvents"]
    Path(f"{out}.rank{rank}").write_text(json.dumps(
        {"bytes": collective_bytes(events, world=2, rank=rank),
         "routing": routing_counts(trainer, 2) if mode == "ep2" else {}}))
    leave_distributed(0, all_ranks_done=True)


def dense_params(overrides: list[str]) -> int:
    """The parameters of the ep2 mode's model that FSDP shards: all but the experts'."""
    from triforge.launcher.config import load_config

    cfg = load_config([*overrides, *MODES["ep2"]]).model
    moe = cfg.moe
    experts = sum(moe.num_experts * 3 * cfg.d_model * moe.expert_hidden
                  for i in range(cfg.n_layers) if moe.is_moe_layer(i))
    return cfg.num_params(cfg.padded_vocab(258)) - experts


def all_to_all_row(ranks: list[dict], d_model: int) -> dict:
    """Rank 0's all-to-all bytes against the volume the routing counts give: its rows to
    the other rank's experts and the other rank's rows to its own, each crossing once in
    forward (dispatch, combine back) and once in backward, fp32; plus, per layer forward,
    the exchange of E int64 counts (half of them to the other rank)."""
    routing = ranks[0]["routing"]
    sent, received = routing["rows_to"][1], ranks[1]["routing"]["rows_to"][0]
    rows = 2 * (sent + received)
    counts = routing["forwards"] * routing["experts"] // 2 * 8
    analytic = rows * d_model * 4 + counts
    measured = ranks[0]["bytes"].get("alltoall_base_", 0.0)
    return {"mode": "ep2_a2a", "measured": measured, "analytic": analytic,
            "ratio": measured / analytic, "breakdown": {"alltoall_base_": measured},
            "formula": f"{rows:,} routed rows x d x 4 B + {counts} B of counts"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(d_model: int = 256, layers: int = 4, batch: int = 8, seq: int = 128) -> list[dict]:
    """One row per mode: measured bytes per rank and step, the analytic volume, their ratio."""
    from triforge.launcher.config import load_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            "model=small", f"model.d_model={d_model}", f"model.n_layers={layers}",
            "model.n_heads=4", f"model.max_seq_len={seq}", f"trainer.seq_len={seq}",
            f"trainer.batch_size={batch}", "trainer.micro_batch_size=2",
            "logging.wandb.enabled=false", "logging.progress_bar=false",
            "trainer.eval_every=0", "checkpoint.every=0", "checkpoint.save_at_end=false",
            "trainer.grad_clip=1.0", f"run.dir={tmp}/run",
        ]
        for mode in MODES:
            out = f"{tmp}/{mode}.json"
            mp.spawn(worker, args=(free_port(), mode, overrides, out), nprocs=2, join=True)
            ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(2)]
            measured = ranks[0]["bytes"]
            if mode == "ep2":
                rows.append(all_to_all_row(ranks, d_model))
                measured = {k: v for k, v in measured.items() if k != "alltoall_base_"}
            if mode == "ep2":  # the rest is FSDP's, over the parameters outside the experts
                micro = batch // 2 // 2
                cfg = load_config(overrides).model
                root = 2 * cfg.padded_vocab(258) * cfg.d_model + cfg.d_model
                minimum, formula = analytic_fsdp(dense_params(overrides), root, micro)
            else:
                minimum, formula = planned(mode, overrides), FORMULAS[mode]
            total = sum(measured.values())
            rows.append({"mode": mode, "measured": total, "analytic": minimum,
                         "ratio": total / minimum, "formula": formula, "breakdown": measured})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    print(f"bytes per rank, one optimizer step; b*s*h = {args.batch * args.seq * args.d_model:,}")
    print(f"{'mode':<10}{'measured':>14}{'analytic':>14}{'ratio':>8}  breakdown")
    for row in measure(args.d_model, args.layers, args.batch, args.seq):
        parts = ", ".join(f"{k} {v / 1e6:.2f}MB" for k, v in sorted(row["breakdown"].items()))
        print(f"{row['mode']:<10}{row['measured'] / 1e6:>12.2f}MB{row['analytic'] / 1e6:>12.2f}MB"
              f"{row['ratio']:>8.2f}  {parts}  [{row['formula']}]")


if __name__ == "__main__":
    main()
