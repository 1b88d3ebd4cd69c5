"""Pipeline bubble per schedule, measured with sleep-based stand-in stages, vs the planner's
formula (plan/schedule.py).

Each stage sleeps instead of computing (t_f in forward; t_b when its input gradient is
computed, t_w when its weight gradient is), so the two cores of a CI machine do not distort
a 4-rank pipeline: a rank's busy time is the sleep it did, and its idle fraction is
1 - busy / step time. The stage split is the trainer's (stage ids r, r + p on rank r) and
the schedules are torch's, run over gloo.

Two more columns separate the schedule from the machine: ``simulated`` replays the
schedule's own action order (the ``pipeline_order`` torch's multi-stage runtime executes) with the
stand-in's durations and no overhead; ``overhead`` is the step time of the same pipeline
with zero-length sleeps (Python dispatch and gloo transfers, per action), as a fraction of
the measured step. The measured idle exceeds the formula by about that share.

    python -m bench.bubble [--ranks 4] [--microbatches 8] [--ms 50]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.pipelining import PipelineStage

from triforge.parallel.pipeline import MULTI_STAGE, schedule_class
from triforge.plan import Layout
from triforge.plan.schedule import bubble_fraction

RUNS = (("gpipe", 1), ("1f1b", 1), ("interleaved_1f1b", 2), ("zero_bubble", 2))
WIDTH = 8


class SleepStage(nn.Module):
    """y = (x * a) * w with sleeps: t_f in forward, t_b when the gradient of the stage's
    intermediate is first computed (the input-gradient pass; zero bubble's weight pass
    goes through that node again, and must not sleep twice), t_w when w's gradient is."""

    def __init__(self, t_f: float, t_b: float, t_w: float, busy: list[float]):
        super().__init__()
        self.a = nn.Parameter(torch.ones(WIDTH))
        self.w = nn.Parameter(torch.ones(WIDTH))
        self.t_f, self.t_b, self.t_w, self.busy = t_f, t_b, t_w, busy
        self.w.register_hook(self._sleeper("t_w"))

    def _sleeper(self, attr: str, *, once: bool = False):
        fired = []

        def hook(grad):
            if not (once and fired):
                self._sleep(getattr(self, attr))
                fired.append(True)
            return grad
        return hook

    def _sleep(self, seconds: float) -> None:
        """Busy time is what the sleep took (a loaded machine oversleeps), not what it asked."""
        start = time.perf_counter()
        time.sleep(seconds)
        if seconds:
            self.busy.append(time.perf_counter() - start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._sleep(self.t_f)
        mid = x * self.a
        mid.register_hook(self._sleeper("t_b", once=True))
        return mid * self.w


def run_step(sched, rank: int, world: int, micro: int) -> float:
    """One schedule step; its time on the slowest rank."""
    x = torch.ones(micro, WIDTH)
    dist.barrier()
    start = time.perf_counter()
    if rank == 0:
        sched.step(x)
    elif rank == world - 1:
        sched.step(target=x)
    else:
        sched.step()
    elapsed = torch.tensor(time.perf_counter() - start, dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return elapsed.item()


def overhead_seconds(sched, stages, rank: int, world: int, micro: int) -> float:
    """The median step time with every sleep set to zero: the schedule's own cost."""
    for stage in stages:
        module = stage.submod
        saved = (module.t_f, module.t_b, module.t_w)
        module.t_f = module.t_b = module.t_w = 0.0
    times = [run_step(sched, rank, world, micro) for _ in range(3)]
    for stage in stages:
        stage.submod.t_f, stage.submod.t_b, stage.submod.t_w = saved
    return statistics.median(times)


def worker(rank: int, world: int, port: int, micro: int, seconds: float, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    results = {}
    for schedule, virtual in RUNS:
        busy: list[float] = []
        per = seconds / virtual  # a rank's work per microbatch stays the same
        stage_ids = list(range(rank, world * virtual, world))
        stages = [PipelineStage(SleepStage(per, per, per, busy), sid, world * virtual,
                                torch.device("cpu")) for sid in stage_ids]
        sched = schedule_class(schedule)(stages if schedule in MULTI_STAGE else stages[0],
                                    n_microbatches=micro, loss_fn=lambda y, t: y.sum(),
                                    scale_grads=False)
        # Multi-stage schedules keep their action order (the runtime executes it).
        order = sched.pipeline_order if schedule in MULTI_STAGE else None
        fractions, steps = [], []
        for step in range(4):
            busy.clear()
            # The step lasts until its slowest rank is done (the first, draining backward).
            elapsed = run_step(sched, rank, world, micro)
            if step:  # the first step infers shapes
                fractions.append(1 - sum(busy) / elapsed)
                steps.append(elapsed)
        results[schedule] = {"idle": statistics.median(fractions), "busy_s": sum(busy),
                             "step_s": statistics.median(steps),
                             "overhead_s": overhead_seconds(sched, stages, rank, world, micro),
                             "order": {r: [str(a) if a else None for a in acts]
                                       for r, acts in (order or {}).items()}}
    Path(f"{out}.{rank}").write_text(json.dumps(results))
    dist.destroy_process_group()


def simulate(order: dict, durations: dict[str, float], n_stages: int) -> float:
    """Idle fraction of the most idle rank when every rank runs its actions of ``order``
    (``"<stage>F<microbatch>"``; kinds F, B = I + W, I, W) in order, each as soon as its
    input is ready: F after the previous stage's F, B/I after the next stage's B/I (the last
    stage's after its own F), W after its I. No communication or dispatch cost."""
    actions = {r: [c for c in map(parse, filter(None, acts)) if c] for r, acts in order.items()}
    finished: dict[tuple, float] = {}
    clock = dict.fromkeys(actions, 0.0)
    busy = dict.fromkeys(actions, 0.0)
    pending = {r: 0 for r in actions}
    progressed = True
    while progressed:
        progressed = False
        for r, acts in actions.items():
            while pending[r] < len(acts):
                stage, kind, mb = acts[pending[r]]
                ready = _ready(finished, stage, kind, mb, n_stages)
                if ready is None:
                    break
                clock[r] = max(clock[r], ready) + durations[kind]
                busy[r] += durations[kind]
                finished[(stage, "I" if kind == "B" else kind, mb)] = clock[r]
                pending[r] += 1
                progressed = True
    assert all(pending[r] == len(a) for r, a in actions.items()), "the order cannot finish"
    span = max(clock.values())
    return max(1 - b / span for b in busy.values())


def parse(action: str) -> tuple[int, str, int] | None:
    """(stage, kind, microbatch) of a compute action; None for the others (REDUCE_GRAD)."""
    match = re.fullmatch(r"(\d+)([FBIW])(\d+)", action)
    return (int(match[1]), match[2], int(match[3])) if match else None


def _ready(finished: dict, stage: int, kind: str, mb: int, n_stages: int) -> float | None:
    if kind == "F":
        dep = (stage - 1, "F", mb) if stage > 0 else None
    elif kind in "BI":
        dep = (stage + 1, "I", mb) if stage < n_stages - 1 else (stage, "F", mb)
    else:
        dep = (stage, "I", mb)
    if dep is None:
        return 0.0
    return finished.get(dep)


def measure(ranks: int = 4, micro: int = 8, ms: float = 50.0) -> list[dict]:
    from bench.comm import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/bubble"
        mp.spawn(worker, args=(ranks, free_port(), micro, ms / 1e3, out), nprocs=ranks)
        per_rank = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(ranks)]
    rows = []
    for schedule, virtual in RUNS:
        formula = bubble_fraction(Layout(pp=ranks, schedule=schedule, virtual=virtual), micro)
        idle = [r[schedule]["idle"] for r in per_rank]
        order = per_rank[0][schedule]["order"]
        t = 1.0 / virtual  # per stage, as the stand-in sleeps
        simulated = (simulate(order, {"F": t, "B": 2 * t, "I": t, "W": t}, ranks * virtual)
                     if order else None)
        overhead = per_rank[0][schedule]["overhead_s"] / per_rank[0][schedule]["step_s"]
        rows.append({"schedule": f"{schedule} v{virtual}", "measured": max(idle),
                     "per_rank": idle, "formula": formula, "simulated": simulated,
                     "overhead": overhead,
                     "expected_busy_s": 3 * micro * ms / 1e3,
                     "busy_s": [r[schedule]["busy_s"] for r in per_rank]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--ms", type=float, default=50.0, help="t_f = t_b = t_w per rank")
    args = parser.parse_args()
    print(f"p={args.ranks} m={args.microbatches}; idle fraction, most idle rank vs formula")
    for row in measure(args.ranks, args.microbatches, args.ms):
        ranks = " ".join(f"{x:.3f}" for x in row["per_rank"])
        busy = " ".join(f"{x:.2f}" for x in row["busy_s"])
        sim = "-" if row["simulated"] is None else f"{row['simulated']:.3f}"
        print(f"{row['schedule']:<20} measured {row['measured']:.3f} formula "
              f"{row['formula']:.3f} diff {row['measured'] - row['formula']:+.3f} simulated "
              f"{sim} overhead {row['overhead']:.3f}  ranks [{ranks}]"
              f"  busy s [{busy}] (expected {row['expected_busy_s']:.2f})")


if __name__ == "__main__":
    main()
