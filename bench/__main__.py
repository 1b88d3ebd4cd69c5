"""``python -m bench`` (``make bench``): the benchmarks as one table, written to JSON too.

Every figure is a ratio measured in the same run (this machine is shared and noisy):

1. throughput of ``small`` and a ~40M-parameter shape in fp32 and bf16 (``small`` compiled too,
   with its speedup over eager): tokens/s, model
   FLOP/s (6N + 12 L h s per token, N the non-embedding parameters) and their ratio to the
   machine's matmul rate in that dtype, measured just before;
2. framework overhead: triforge / a hand-written loop, per round (bench/overhead.py);
3. communication bytes per step and mode vs the planner's volumes (bench/comm.py);
4. pipeline bubble per schedule, sleep-based stages, vs the planner's formula (bench/bubble.py);
5. memory per rank: parameters, gradients, optimizer state and block activations in real
   layouts vs the planner's formulas (bench/memory_rank.py);
6. the planner's predictions for published runs (bench/anchors.py).

    python -m bench [--quick] [--out bench-results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench import anchors, bubble, comm, memory_rank, overhead
from triforge.launcher.config import load_config
from triforge.launcher.train import train
from triforge.trainer.flops import flops_per_token, measure_matmul_peak

SHAPES = {"small": ["model=small"],
          "40M": ["model=small", "model.d_model=512", "model.n_layers=12", "model.n_heads=8"]}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def throughput(shape: str, dtype: str, steps: int, *, compiled: bool = False) -> dict:
    overrides = [*SHAPES[shape], f"precision={dtype}", "trainer.batch_size=8",
                 "trainer.seq_len=256", "trainer.micro_batch_size=8",
                 f"trainer.compile={str(compiled).lower()}"]
    gemm = measure_matmul_peak(torch.device("cpu"), DTYPES[dtype])
    with tempfile.TemporaryDirectory() as run_dir:
        job = load_config([f"run.dir={run_dir}", "logging.wandb.enabled=false",
                           "logging.progress_bar=false", "trainer.eval_every=0",
                           "checkpoint.every=0", "checkpoint.save_at_end=false",
                           "trainer.sample_at_end=false", f"trainer.max_steps={steps}",
                           "trainer.log_every=1", *overrides])
        trainer = train(job, log=lambda *_: None)
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    tokens_per_s = statistics.median(json.loads(line)["tokens_per_s"] for line in lines[2:])
    vocab = trainer.model.vocab_size
    per_token = flops_per_token(job.model.num_params(vocab, embedding=False, active=True),
                                job.model.n_layers, job.model.d_model, job.trainer.seq_len)
    model_flops = tokens_per_s * per_token
    name = f"{shape} {dtype}{' compiled' if compiled else ''}"
    return {"section": "throughput", "name": name, "tokens_per_s": tokens_per_s,
            "model_flops": model_flops, "gemm_flops": gemm, "ratio": model_flops / gemm,
            "target": "ratio of the machine's matmul rate"}


def run(quick: bool) -> list[dict]:
    rows = []
    steps = 6 if quick else 12
    for shape in SHAPES:
        for dtype in DTYPES:
            rows.append(throughput(shape, dtype, steps))
    for dtype in DTYPES:  # compiled (the first steps compile; the median skips them)
        eager = next(r for r in rows if r["name"] == f"small {dtype}")
        row = throughput("small", dtype, steps + 4, compiled=True)
        row["speedup"] = row["tokens_per_s"] / eager["tokens_per_s"]
        rows.append(row)
    result = overhead.measure(2 if quick else 6, 6 if quick else 8, ["model=small"])
    ratios = result["ratios"]
    rows.append({"section": "overhead", "name": "triforge / hand loop (small)",
                 "ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                 "rounds": ratios, "target": ">= 0.97"})
    for row in comm.measure(layers=2 if quick else 4):
        rows.append({"section": "comm", "name": row["mode"], "ratio": row["ratio"],
                     "measured_bytes": row["measured"], "analytic_bytes": row["analytic"],
                     "formula": row["formula"], "target": "1.00 +- 0.05"})
    for row in bubble.measure(ms=30 if quick else 50):
        rows.append({"section": "bubble", "name": row["schedule"], "ratio": row["measured"],
                     "formula": row["formula"], "target": "within 0.02 of the formula"})
    rows += memory_rows()
    for row in anchors.rows():
        rows.append({"section": "anchor", **row, "target": "published"})
    return rows


def memory_rows() -> list[dict]:
    """One row per layout and kind: the worst measured / predicted over its ranks."""
    worst: dict[tuple, dict] = {}
    for r in memory_rank.measure():
        key = (r["layout"], r["kind"])
        if key not in worst or abs(r["ratio"] - 1) > abs(worst[key]["ratio"] - 1):
            worst[key] = r
    return [{"section": "memory", "name": f"{layout} {kind}", "ratio": r["ratio"],
             "measured_bytes": r["measured"], "analytic_bytes": r["predicted"],
             "formula": "plan/memory.py", "target": "1.000 (exact)"}
            for (layout, kind), r in worst.items()]


def print_table(rows: list[dict]) -> None:
    print(f"{'section':<11}{'name':<30}{'ratio':>8}  details")
    for row in rows:
        if row["section"] == "throughput":
            details = (f"{row['tokens_per_s']:,.0f} tok/s, model {row['model_flops'] / 1e9:.1f}"
                       f" GFLOP/s vs matmul {row['gemm_flops'] / 1e9:.1f} GFLOP/s")
            if "speedup" in row:
                details += f"; {row['speedup']:.2f}x eager"
        elif row["section"] == "overhead":
            details = f"min {row['min']:.3f} max {row['max']:.3f} (target {row['target']})"
        elif row["section"] == "bubble":
            details = f"idle fraction vs formula {row['formula']:.3f} ({row['target']})"
        elif row["section"] == "anchor":
            details = (f"predicted {row['predicted']:,.1f} vs published {row['published']:,.1f} "
                       f"{row['unit']} [{' '.join(row['layout'])}]")
        else:
            details = (f"{row['measured_bytes'] / 1e6:.2f} MB vs {row['analytic_bytes'] / 1e6:.2f}"
                       f" MB (target {row['target']}) [{row['formula']}]")
        print(f"{row['section']:<11}{row['name']:<30}{row['ratio']:>8.3f}  {details}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--out", default="bench-results.json")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = run(args.quick)
    print_table(rows)
    Path(args.out).write_text(json.dumps({"rows": rows, "seconds": time.perf_counter() - start},
                                         indent=1))
    print(f"written {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
