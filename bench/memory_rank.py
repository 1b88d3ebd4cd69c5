"""Memory per rank, measured in real multi-process layouts, vs the planner's formulas
(plan/memory.py): bytes of parameters, gradients and optimizer state each rank allocates
(goal: exact), and the bytes a microbatch's blocks save for backward.

Each layout trains one step of a small model on gloo; parameters and optimizer state are
counted after the step, gradients just before the update (the trainer frees them after),
all as local shards.

    python -m bench.memory_rank
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from bench.comm import free_port

LAYOUTS = {  # name: (processes, overrides)
    "ddp2": (2, ["parallel.dp_replicate=2", "parallel.dp_shard=1"]),
    "fsdp2": (2, ["parallel.dp_shard=2"]),
    "tp2": (2, ["parallel.tp=2"]),
    "tp2_nosp": (2, ["parallel.tp=2", "parallel.sequence_parallel=false"]),
    "pp2": (2, ["parallel.pp=2", "parallel.pp_schedule=1f1b"]),
    "hsdp2x2": (4, ["parallel.dp_replicate=2", "parallel.dp_shard=2"]),
    "fsdp2_tp2": (4, ["parallel.dp_shard=2", "parallel.tp=2"]),
}
BASE = ["model=small", "model.d_model=128", "model.n_layers=4", "model.n_heads=4",
        "model.max_seq_len=64", "trainer.seq_len=64", "trainer.batch_size=8",
        "trainer.micro_batch_size=2", "logging.wandb.enabled=false",
        "logging.progress_bar=false", "trainer.eval_every=0", "checkpoint.every=0",
        "checkpoint.save_at_end=false", "trainer.sample_at_end=false"]


def local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def block_saved_bytes(part, tokens: torch.Tensor) -> int:
    """Bytes the blocks of ``part`` save for backward in one forward of ``tokens``, each
    storage once, parameters and buffers left out (parallel/activation_checkpoint.py counts
    the same way for the whole model)."""
    skip = {storage_ptr(t) for t in [*part.parameters(), *part.buffers()]}
    seen, current, inside, total = set(), set(), [False], [0]

    def pack(t):
        if not inside[0]:
            return t
        local = t.to_local() if isinstance(t, DTensor) else t
        local = getattr(local, "elem", local)  # an in-flight collective's result
        ptr = local.untyped_storage().data_ptr()
        if ptr not in skip and ptr not in current and ptr not in seen:
            seen.add(ptr)
            total[0] += local.untyped_storage().nbytes()
        return t

    def enter(block, _args):
        # FSDP gathers a block's parameters before its forward: their unsharded storages
        # are parameters too (freed after forward), not activations.
        # Only the running block's: a freed block's storage may hold activations by now.
        current.clear()
        current.update(storage_ptr(p) for p in block.parameters())
        inside[0] = True

    handles = []
    for block in part.layers.values():
        handles.append(block.register_forward_pre_hook(enter))
        handles.append(block.register_forward_hook(lambda *_: inside.__setitem__(0, False)))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = part(tokens)
    del out
    for h in handles:
        h.remove()
    return total[0]


def storage_ptr(t: torch.Tensor) -> int:
    t = t.to_local() if isinstance(t, DTensor) else t
    return t.untyped_storage().data_ptr()


def worker(rank: int, world: int, port: int, name: str, out: str) -> None:
    from triforge.launcher.build import build_trainer, pick_device
    from triforge.launcher.config import load_config
    from triforge.launcher.dist import init_distributed, leave_distributed
    from triforge.launcher.env import ProcessEnv
    from triforge.launcher.train import resolve_layout
    from triforge.parallel.context import ParallelContext
    from triforge.parallel.mesh import build_meshes

    env = ProcessEnv(rank=rank, world_size=world, master_port=port, source="bench")
    with tempfile.TemporaryDirectory() as run_dir:
        job = load_config([*BASE, *LAYOUTS[name][1], f"run.dir={run_dir}"])
        dims = resolve_layout(job, env)
        device = pick_device(job.trainer.device, env)
        init_distributed(env, device, timeout_s=300)
        ctx = ParallelContext(dims, build_meshes(dims, device.type), rank)
        trainer, _ = build_trainer(job, env, ctx, device, log=lambda *_: None)
        params = [p for part in trainer.parts for p in part.parameters()]
        grads = []
        trainer.hooks.before_optimizer_step.append(
            lambda step: grads.append(sum(local_bytes(p.grad) for p in params)))
        trainer.train_step()
        opt_bytes = sum(local_bytes(v) for opt in trainer.engine.optimizer.optimizers
                        for state in opt.state.values() for v in state.values())
        measured = {"params": sum(local_bytes(p) for p in params), "grads": grads[0],
                    "optimizer": opt_bytes}
        if dims.pp == 1:
            tokens = torch.randint(0, 256, (job.trainer.micro_batch_size, job.trainer.seq_len))
            measured["block_activations"] = block_saved_bytes(trainer.parts[0], tokens)
        Path(f"{out}.{rank}").write_text(json.dumps({"measured": measured,
                                                     "pp_rank": ctx.pp_rank}))
    leave_distributed(0, all_ranks_done=True)


def predicted(name: str, pp_rank: int) -> dict[str, float]:
    from triforge.launcher.config import load_config
    from triforge.plan.layout import layout_from_job, workload_from_job
    from triforge.plan.memory import block_activation_bytes, state_bytes

    job = load_config([*BASE, *LAYOUTS[name][1]])
    layout, work = layout_from_job(job, LAYOUTS[name][0]), workload_from_job(job)
    out = dict(state_bytes(work, layout, pp_rank))
    tokens = layout.micro_batch * work.seq_len
    out["block_activations"] = job.model.n_layers * block_activation_bytes(work, layout,
                                                                           tokens=tokens)
    return out


def measure() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (procs, _) in LAYOUTS.items():
            out = f"{tmp}/{name}"
            mp.spawn(worker, args=(procs, free_port(), name, out), nprocs=procs)
            for rank in range(procs):
                got = json.loads(Path(f"{out}.{rank}").read_text())
                want = predicted(name, got["pp_rank"])
                for kind, value in got["measured"].items():
                    rows.append({"layout": name, "rank": rank, "kind": kind, "measured": value,
                                 "predicted": want[kind], "ratio": value / want[kind]})
    return rows


def main() -> None:
    print(f"{'layout':<11}{'rank':>5} {'kind':<18}{'measured':>12}{'predicted':>12}{'ratio':>8}")
    for r in measure():
        print(f"{r['layout']:<11}{r['rank']:>5} {r['kind']:<18}{r['measured']:>12,}"
              f"{r['predicted']:>12,.0f}{r['ratio']:>8.4f}")


if __name__ == "__main__":
    main()
