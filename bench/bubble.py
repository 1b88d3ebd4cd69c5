"""Pipeline bubble per schedule, measured with sleep-based stand-in stages, vs the planner's
formula (plan/schedule.py).

Each stage sleeps instead of computing (t_f in forward; t_b when its input gradient is
computed, t_w when its weight gradient is), so the two cores of a CI machine do not distort
a 4-rank pipeline: a rank's busy time is the sleep it did, and its idle fraction is
1 - busy / step time. The stage split is the trainer's (stage ids r, r + p on rank r) and
the schedules are torch's, run over gloo.

    python bench/bubble.py [--ranks 4] [--microbatches 8] [--ms 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.pipelining import PipelineStage

from triforge.parallel.pipeline import MULTI_STAGE, SCHEDULES
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
        self.t_f, self.t_b, self.busy = t_f, t_b, busy
        self.w.register_hook(self._sleeper(t_w))

    def _sleeper(self, seconds: float, *, once: bool = False):
        fired = []

        def hook(grad):
            if not (once and fired):
                self._sleep(seconds)
                fired.append(True)
            return grad
        return hook

    def _sleep(self, seconds: float) -> None:
        """Busy time is what the sleep took (a loaded machine oversleeps), not what it asked."""
        start = time.perf_counter()
        time.sleep(seconds)
        self.busy.append(time.perf_counter() - start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._sleep(self.t_f)
        mid = x * self.a
        mid.register_hook(self._sleeper(self.t_b, once=True))
        return mid * self.w


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
        sched = SCHEDULES[schedule](stages if schedule in MULTI_STAGE else stages[0],
                                    n_microbatches=micro, loss_fn=lambda y, t: y.sum(),
                                    scale_grads=False)
        fractions = []
        for step in range(4):
            busy.clear()
            x = torch.ones(micro, WIDTH)
            dist.barrier()
            start = time.perf_counter()
            if rank == 0:
                sched.step(x, target=x) if world == 1 else sched.step(x)
            elif rank == world - 1:
                sched.step(target=x)
            else:
                sched.step()
            # The step lasts until its slowest rank is done (the first, draining backward).
            elapsed = torch.tensor(time.perf_counter() - start, dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            if step:  # the first step infers shapes
                fractions.append(1 - sum(busy) / elapsed.item())
        results[schedule] = {"idle": statistics.median(fractions), "busy_s": sum(busy)}
    Path(f"{out}.{rank}").write_text(json.dumps(results))
    dist.destroy_process_group()


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
        rows.append({"schedule": f"{schedule} v{virtual}", "measured": max(idle),
                     "per_rank": idle, "formula": formula,
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
        print(f"{row['schedule']:<20} measured {row['measured']:.3f} formula "
              f"{row['formula']:.3f} diff {row['measured'] - row['formula']:+.3f}  ranks [{ranks}]"
              f"  busy s [{busy}] (expected {row['expected_busy_s']:.2f})")


if __name__ == "__main__":
    main()
