"""``triforge-plan model=llama_8b world_size=64 gpus_per_node=8 gpu=h100 [options] [overrides]``:
candidate layouts ranked by predicted step time, before a cluster is booked.

Options: ``gpu=`` (h100, h200, a100, a100_40gb, b200, mi300x), ``efficiency=`` (fraction of
the dense peak compute sustains, default 0.5), ``intra_bw=``/``inter_bw=`` (GB/s per GPU),
``top=`` (rows shown, default 10), ``json=PATH`` (every prediction, rejected ones too).
Everything else is a job override: ``trainer.batch_size`` (global, in sequences),
``trainer.seq_len``, ``precision`` (bf16 unless given). The formulas are in plan/; ``make
bench`` checks the ones a CPU can measure.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from triforge.errors import ConfigError, TriforgeError
from triforge.plan import Workload, device_named, plan
from triforge.plan.layout import workload_from_job

from .config import load_config

OPTIONS = {"world_size": int, "gpus_per_node": int, "gpu": str, "efficiency": float,
           "intra_bw": float, "inter_bw": float, "top": int, "json": str}
DEFAULTS = {"gpus_per_node": 8, "gpu": "h100", "efficiency": 0.5, "intra_bw": 0.0,
            "inter_bw": 0.0, "top": 10, "json": ""}


def parse(args: list[str]) -> tuple[dict, list[str]]:
    opts, rest = dict(DEFAULTS), []
    for arg in args:
        key, _, value = arg.partition("=")
        if key not in OPTIONS:
            rest.append(arg)
            continue
        try:
            opts[key] = OPTIONS[key](value)
        except ValueError:
            raise ConfigError(f"{key}={value} must be a {OPTIONS[key].__name__}") from None
    if "world_size" not in opts or opts["world_size"] < 1:
        raise ConfigError("give the number of GPUs, e.g. world_size=64")
    if opts["gpus_per_node"] < 1 or not 0 < opts["efficiency"] <= 1:
        raise ConfigError("gpus_per_node must be >= 1 and efficiency in (0, 1]")
    if not any(a.startswith("precision=") for a in rest):
        rest.insert(0, "precision=bf16")
    return opts, rest


def row(i: int, p) -> str:
    lay, gib = p.layout, sum(p.memory.values()) / 2**30
    sched = f"{lay.schedule} v{lay.virtual}" if lay.pp > 1 else "-"
    comm = " ".join(f"{k} {p.comm_bytes[k] / 1e9:.1f}GB/{s * 1e3:.0f}ms"
                    for k, s in p.comm_seconds.items())
    return (f"{i:>3} {lay.dp_replicate:>4} {lay.dp_shard:>5} {lay.tp:>3} {lay.pp:>3} "
            f"{sched:<20}{lay.micro_batch:>4} {lay.ac:<10}{gib:>7.1f} {p.step_s:>8.2f} "
            f"{p.tokens_per_s_per_gpu:>9.0f} {p.mfu:>6.1%} {p.bubble:>6.1%}  {comm}")


def report(work: Workload, opts: dict, fits: list, rejected: list) -> None:
    m = work.model
    print(f"{m.name}: {m.num_params(work.vocab) / 1e9:.2f}B parameters, batch "
          f"{work.batch_size} x seq {work.seq_len}, {work.dtype}; {opts['world_size']} x "
          f"{opts['gpu']} ({opts['gpus_per_node']} per node), efficiency {opts['efficiency']}")
    print("  # dp_r dp_sh  tp  pp schedule             mbs ac          GiB   step_s "
          "tok/s/gpu    MFU bubble  comm per step (bytes/exposed time)")
    for i, p in enumerate(fits[:opts["top"]], 1):
        print(row(i, p))
    reasons: dict[str, int] = {}
    for p in rejected:
        key = p.rejected.split(" GiB")[0].split("(")[0] if "GiB" in p.rejected else p.rejected
        reasons[key] = reasons.get(key, 0) + 1
    print(f"{len(fits)} layouts fit; {len(rejected)} rejected:")
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {count:>5} x {reason}")


def main(argv: list[str] | None = None) -> int:
    try:
        opts, rest = parse(sys.argv[1:] if argv is None else argv)
        device = device_named(opts["gpu"], intra_bw=opts["intra_bw"], inter_bw=opts["inter_bw"])
        work = workload_from_job(load_config(rest))
        fits, rejected = plan(work, opts["world_size"], device,
                              gpus_per_node=opts["gpus_per_node"], efficiency=opts["efficiency"])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TriforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(work, opts, fits, rejected)
    if opts["json"]:
        with open(opts["json"], "w") as f:
            json.dump([{**asdict(p), "layout": asdict(p.layout)} for p in fits + rejected], f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
