"""Training runs of the real entry point, as one process or under torchrun, and the
comparisons the parity, resume and reshard tests make between them.

Same seed, data and global batch: per-step loss and global gradient norm over ``STEPS``
steps must match the single process to ``RTOL`` relative (fp32; the layouts only change the
order of floating-point sums).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.helpers.bounded import run_bounded

STEPS = 6
SAVE_AT = 3  # the resume tests' checkpoint: steps 1-3 before it, 4-6 after
RTOL = 1e-5
COMMON = [
    "model=tiny", "model.tie_embeddings=false", "model.n_layers=4", "logging.wandb.enabled=false",
    "logging.progress_bar=false", "trainer.batch_size=8", "trainer.micro_batch_size=2",
    "trainer.seq_len=32", f"trainer.max_steps={STEPS}", "trainer.log_every=1",
    f"trainer.eval_every={SAVE_AT}", "trainer.eval_batches=1", "trainer.sample_at_end=false",
    "checkpoint.every=0", "checkpoint.save_at_end=false", "optim.warmup_steps=2",
    "optim.lr=3e-3",
    # MFU against a configured peak: no matmul bursts to measure one (about 1.5 s per
    # process; the measurement has tests of its own), and no plot (matplotlib)
    "logging.peak_flops=1e12", "logging.plot=false",
]

LAYOUTS = {
    "dp2": (2, ["parallel.dp_replicate=2", "parallel.dp_shard=1"]),
    "fsdp2": (2, ["parallel.dp_shard=2"]),
    "tp2": (2, ["parallel.tp=2"]),
    "tp2_no_sp": (2, ["parallel.tp=2", "parallel.sequence_parallel=false"]),
    "fsdp2_no_reshard": (2, ["parallel.dp_shard=2", "parallel.fsdp_reshard_after_forward=false"]),
    "hsdp2x2": (4, ["parallel.dp_replicate=2", "parallel.dp_shard=2"]),
    "dp2_tp2": (4, ["parallel.dp_replicate=2", "parallel.dp_shard=1", "parallel.tp=2"]),
    "fsdp2_tp2": (4, ["parallel.dp_shard=2", "parallel.tp=2"]),
    "fsdp2_ac_full": (2, ["parallel.dp_shard=2", "parallel.activation_checkpoint=full"]),
    "tp2_ac_selective": (2, ["parallel.tp=2", "parallel.activation_checkpoint=selective"]),
    "pp2_gpipe": (2, ["parallel.pp=2", "parallel.pp_schedule=gpipe"]),
    "pp2_1f1b": (2, ["parallel.pp=2", "parallel.pp_schedule=1f1b"]),
    "pp2_interleaved_1f1b": (2, ["parallel.pp=2", "parallel.pp_schedule=interleaved_1f1b",
                                 "parallel.pp_virtual_stages=2"]),
    "pp2_zero_bubble": (2, ["parallel.pp=2", "parallel.pp_schedule=zero_bubble",
                            "parallel.pp_virtual_stages=2"]),
    "fsdp2_pp2": (4, ["parallel.dp_shard=2", "parallel.pp=2"]),
    "tp2_pp2": (4, ["parallel.tp=2", "parallel.pp=2"]),
    "dp2_tp2_pp2": (8, ["parallel.dp_replicate=2", "parallel.dp_shard=1", "parallel.tp=2",
                        "parallel.pp=2"]),
}


def run_layout(run_dir: Path, nproc: int, overrides: list[str], data: list[str],
               common: list[str] = COMMON) -> list[dict]:
    """Train with ``nproc`` processes (torchrun when > 1); returns metrics.jsonl records."""
    args = [*common, *data, f"run.dir={run_dir}", *overrides]
    if nproc == 1:
        cmd = [sys.executable, "-m", "triforge.launcher.train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "triforge.launcher.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_bounded(cmd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_rel_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def assert_same_run(name: str, records: list[dict], reference: list[dict]) -> None:
    """Per-step loss and gradient norm, and both validation losses, within RTOL."""
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm"):
        diff = max_rel_diff([r[key] for r in records], [r[key] for r in reference])
        print(f"{name} {key} max relative difference {diff:.2e}")
        assert diff <= RTOL, f"{name}: {key} differs by {diff:.2e} (> {RTOL})"
    val = [r["val_loss"] for r in records if r.get("val_loss") is not None]
    ref_val = [r["val_loss"] for r in reference if r.get("val_loss") is not None]
    assert len(val) == 2, f"{name}: expected 2 validation losses, got {val}"
    diff = max_rel_diff(val, ref_val)
    assert diff <= RTOL, f"{name}: val_loss differs by {diff:.2e} (> {RTOL})"
