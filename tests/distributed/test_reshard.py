"""A checkpoint saved in one parallel layout resumes in another and trains on unchanged.

Each source layout trains steps 1-3 (``SAVE_AT``) and saves ``step_3`` (once per module; the
single-process source is the step-3 checkpoint of the uninterrupted baseline run). A resume in
another layout starts in a new run.dir with ``checkpoint.resume=<source>/checkpoints/step_3``
and trains steps 4-6. Its per-step loss and gradient norm and its step-6 validation loss must
match the uninterrupted single-process run to 1e-5 relative, the parity tolerance (fp32;
layouts only change the order of floating-point sums). That holds only if all the state
resharded: the weights, the data cursor (same global samples at every step) and Adam's
moments and step counts. Measured with a step-3 checkpoint of a 10-step run: resumed with the
weights alone (fresh moments, step count 0), the loss two steps later already differed by
2e-2 relative, three orders of magnitude above the tolerance.

CI runs a cycle that has every layout once as a source and once as a destination, data
parallelism growing, shrinking and changing kind (replicate, shard) along the way:
1 -> dp2_tp2 -> pp2 -> fsdp2 -> tp2 -> dp2 -> 1, plus dp2_tp2 -> fsdp4, and across engines
fsdp2 -> DeepSpeed ZeRO-3 -> ZeRO-2 -> 1, and into and out of context parallelism, 1 <-> cp2.
With
``TRIFORGE_RESHARD_ALL=1`` in the environment it runs all 30 ordered pairs of the six layouts
(6 saves and 30 resumes, ~12 minutes on two cores) instead.
"""

from __future__ import annotations

import os
from itertools import permutations
from pathlib import Path

import pytest

from tests.helpers.runs import COMMON, RTOL, SAVE_AT, STEPS, max_rel_diff, run_layout
from tests.helpers.runs import LAYOUTS as PARITY

SAVED_AT = SAVE_AT
LAYOUTS = {
    "1": (1, []),
    "dp2": PARITY["dp2"],
    "fsdp2": PARITY["fsdp2"],
    "tp2": PARITY["tp2"],
    "pp2": PARITY["pp2_interleaved_1f1b"],  # two stages per rank: two optimizers to reshard
    "dp2_tp2": PARITY["dp2_tp2"],
    "fsdp4": (4, ["parallel.dp_shard=4"]),
    "zero2": (2, ["parallel.engine=deepspeed", "parallel.zero_stage=2"]),
    "zero3": (2, ["parallel.engine=deepspeed", "parallel.zero_stage=3"]),
    "cp2": (2, ["parallel.cp=2"]),  # FSDP over the cp ranks, each holding half of a sequence
}
SIX = ["1", "dp2", "fsdp2", "tp2", "pp2", "dp2_tp2"]
RING = ["1", "dp2_tp2", "pp2", "fsdp2", "tp2", "dp2"]
# DeepSpeed checkpoints are in our format: FSDP2 -> ZeRO-3 -> ZeRO-2 -> one process
ENGINES = [("fsdp2", "zero3"), ("zero3", "zero2"), ("zero2", "1")]
CYCLE = [*zip(RING, RING[1:] + RING[:1], strict=True), ("dp2_tp2", "fsdp4"), *ENGINES,
         ("1", "cp2"), ("cp2", "1")]
PAIRS = list(permutations(SIX, 2)) if os.environ.get("TRIFORGE_RESHARD_ALL") == "1" else CYCLE
NO_SAVES = [a for a in COMMON if not a.startswith("checkpoint.")]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data_overrides) -> tuple[list[dict], Path]:
    """The uninterrupted single-process run (its records) and its step-3 checkpoint."""
    run_dir = tmp_path_factory.mktemp("single")
    ckpt = [f"checkpoint.every={SAVED_AT}", "checkpoint.save_at_end=false"]
    records = run_layout(run_dir, 1, [], data_overrides, [*NO_SAVES, *ckpt])
    return records, run_dir / "checkpoints" / f"step_{SAVED_AT}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, data_overrides, baseline):
    """The step-3 checkpoint of a layout, trained and saved on first use."""
    paths = {"1": baseline[1]}

    def get(name: str) -> Path:
        if name not in paths:
            run_dir = tmp_path_factory.mktemp(f"save_{name}")
            nproc, overrides = LAYOUTS[name]
            ckpt = ["checkpoint.every=0", "checkpoint.save_at_end=true"]
            run_layout(run_dir, nproc, [*overrides, f"trainer.stop_at_step={SAVED_AT}"],
                       data_overrides, [*NO_SAVES, *ckpt])
            paths[name] = run_dir / "checkpoints" / f"step_{SAVED_AT}"
        return paths[name]

    return get


def pair_param(source: str, dest: str):
    marks = [pytest.mark.slow] if max(LAYOUTS[source][0], LAYOUTS[dest][0]) > 2 else []
    return pytest.param(source, dest, marks=marks, id=f"{source}-to-{dest}")


@pytest.mark.distributed
@pytest.mark.parametrize(("source", "dest"), [pair_param(s, d) for s, d in PAIRS])
def test_resume_in_another_layout_continues_the_run(source, dest, saved, baseline, tmp_path,
                                                    data_overrides):
    reference = {r["step"]: r for r in baseline[0]}
    nproc, overrides = LAYOUTS[dest]
    ckpt = ["checkpoint.every=0", "checkpoint.save_at_end=false",
            f"checkpoint.resume={saved(source)}"]
    records = run_layout(tmp_path / dest, nproc, overrides, data_overrides, [*NO_SAVES, *ckpt])
    steps = list(range(SAVED_AT + 1, STEPS + 1))
    assert [r["step"] for r in records] == steps, f"the resumed run must start at {steps[0]}"
    assert [r["tokens_seen"] for r in records] == [reference[s]["tokens_seen"] for s in steps]
    for key in ("loss", "grad_norm", "val_loss"):
        got = [r[key] for r in records if r.get(key) is not None]
        want = [reference[s][key] for s in steps if reference[s].get(key) is not None]
        assert len(got) == len(want) > 0, f"{key}: {len(got)} values, expected {len(want)}"
        diff = max_rel_diff(got, want)
        print(f"{source} -> {dest} {key} max relative difference {diff:.2e}")
        assert diff <= RTOL, f"{source} -> {dest}: {key} differs by {diff:.2e} (> {RTOL})"


# A tied embedding is one tensor in one process and under TP, two copies under PP: a
# checkpoint of either form resumes in the other.
TIED = [*(a for a in NO_SAVES if not a.startswith("model.tie_embeddings")),
        "model.tie_embeddings=true"]
TIED_CYCLE = [("1", "pp2"), ("pp2", "tp2"), ("tp2", "1")]


@pytest.fixture(scope="module")
def tied_runs(tmp_path_factory, data_overrides):
    """(the uninterrupted tied single-process records, step-3 checkpoint of each layout)."""
    ckpt = [f"checkpoint.every={SAVED_AT}", "checkpoint.save_at_end=false"]
    run_dir = tmp_path_factory.mktemp("tied_single")
    records = run_layout(run_dir, 1, [], data_overrides, [*TIED, *ckpt])
    paths = {"1": run_dir / "checkpoints" / f"step_{SAVED_AT}"}
    for name in ("pp2", "tp2"):
        run_dir = tmp_path_factory.mktemp(f"tied_{name}")
        nproc, overrides = LAYOUTS[name]
        run_layout(run_dir, nproc, [*overrides, f"trainer.stop_at_step={SAVED_AT}"],
                   data_overrides, [*TIED, "checkpoint.every=0", "checkpoint.save_at_end=true"])
        paths[name] = run_dir / "checkpoints" / f"step_{SAVED_AT}"
    return records, paths


@pytest.mark.distributed
@pytest.mark.parametrize(("source", "dest"), TIED_CYCLE, ids=[f"{s}-to-{d}" for s, d in TIED_CYCLE])
def test_tied_checkpoint_resumes_in_another_layout(source, dest, tied_runs, tmp_path,
                                                   data_overrides):
    records_ref, paths = tied_runs
    resume_and_compare(f"tied {source} -> {dest}", paths[source], LAYOUTS[dest], TIED,
                       records_ref, ("loss", "grad_norm"), tmp_path / dest, data_overrides)


def resume_and_compare(name: str, checkpoint: Path, layout, common: list[str],
                       baseline: list[dict], keys: tuple[str, ...], run_dir: Path,
                       data_overrides) -> None:
    """Resume ``checkpoint`` in ``layout`` for steps 4-6; each of ``keys`` must match the
    uninterrupted ``baseline`` to RTOL."""
    reference = {r["step"]: r for r in baseline}
    nproc, overrides = layout
    ckpt = ["checkpoint.every=0", "checkpoint.save_at_end=false",
            f"checkpoint.resume={checkpoint}"]
    records = run_layout(run_dir, nproc, overrides, data_overrides, [*common, *ckpt])
    steps = list(range(SAVED_AT + 1, STEPS + 1))
    assert [r["step"] for r in records] == steps
    for key in keys:
        diff = max_rel_diff([r[key] for r in records], [reference[s][key] for s in steps])
        print(f"{name} {key} max relative difference {diff:.2e}")
        assert diff <= RTOL, f"{name}: {key} differs by {diff:.2e} (> {RTOL})"


# Mixture-of-experts checkpoints: expert weights (sharded along the expert dimension under
# expert parallelism, along dim 0 by FSDP otherwise, whole in one process), their Adam
# moments and the routers' selection bias reshard between ep2, one process and fsdp2, and
# from ep over the tp ranks (dense weights tensor-parallel) to ep over data ranks.
MOE = [*("model=moe_tiny" if a == "model=tiny" else a for a in NO_SAVES),
       "model.moe.router.z_loss_coeff=1e-3", "model.moe.router.bias_update_rate=1e-2"]
MOE_LAYOUTS = {"1": (1, []), "ep2": (2, ["parallel.dp_shard=2", "parallel.ep=2"]),
               "fsdp2": PARITY["fsdp2"],
               "ep2_fsdp2": (4, ["parallel.dp_shard=4", "parallel.ep=2"]),
               "ep2_tp2": (2, ["parallel.tp=2", "parallel.ep=2"])}
MOE_CYCLE = [("1", "ep2"), ("ep2", "1"), ("ep2", "fsdp2"), ("ep2_tp2", "ep2"),
             pytest.param("ep2", "ep2_fsdp2", marks=pytest.mark.slow),
             pytest.param("ep2_fsdp2", "fsdp2", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def moe_runs(tmp_path_factory, data_overrides):
    ckpt = [f"checkpoint.every={SAVED_AT}", "checkpoint.save_at_end=false"]
    run_dir = tmp_path_factory.mktemp("moe_single")
    records = run_layout(run_dir, 1, [], data_overrides, [*MOE, *ckpt])
    paths = {"1": run_dir / "checkpoints" / f"step_{SAVED_AT}"}

    def saved_by(name: str) -> Path:
        if name not in paths:
            run_dir = tmp_path_factory.mktemp(f"moe_{name}")
            nproc, overrides = MOE_LAYOUTS[name]
            run_layout(run_dir, nproc, [*overrides, f"trainer.stop_at_step={SAVED_AT}"],
                       data_overrides, [*MOE, "checkpoint.every=0",
                                        "checkpoint.save_at_end=true"])
            paths[name] = run_dir / "checkpoints" / f"step_{SAVED_AT}"
        return paths[name]

    return records, saved_by


@pytest.mark.distributed
@pytest.mark.parametrize(("source", "dest"), MOE_CYCLE)
def test_moe_checkpoint_reshards_across_expert_parallel_sizes(source, dest, moe_runs,
                                                              tmp_path, data_overrides):
    baseline, saved_by = moe_runs
    resume_and_compare(f"moe {source} -> {dest}", saved_by(source), MOE_LAYOUTS[dest], MOE,
                       baseline, ("loss", "grad_norm", "moe_0_bias_norm"), tmp_path / dest,
                       data_overrides)


@pytest.mark.distributed
@pytest.mark.parametrize(("dest", "load"), [("zero2", "weights"), ("zero3", "weights+optimizer")])
def test_deepspeed_starts_from_another_runs_checkpoint_as_one_process_does(
        dest, load, baseline, tmp_path, data_overrides):
    """checkpoint.init_from under DeepSpeed: the single process's step-3 checkpoint as step 0
    of a new run, with its weights alone (DeepSpeed's fp32 master partitions written too, or
    its first update would undo them) or with Adam's moments as well; the same losses and
    gradient norms as the single process started from the same checkpoint."""
    pytest.importorskip("deepspeed")
    start = [f"checkpoint.init_from={baseline[1]}", f"checkpoint.load={load}",
             "checkpoint.every=0", "checkpoint.save_at_end=false"]
    common = [a for a in NO_SAVES if not a.startswith("trainer.max_steps")]
    short = [*common, "trainer.max_steps=3"]
    one = run_layout(tmp_path / "one", 1, start, data_overrides, short)
    nproc, overrides = LAYOUTS[dest]
    ds = run_layout(tmp_path / dest, nproc, [*overrides, *start], data_overrides, short)
    assert one[0]["loss"] < baseline[0][0]["loss"] - 0.3  # trained weights, not fresh ones
    for key in ("loss", "grad_norm"):
        diff = max_rel_diff([r[key] for r in ds], [r[key] for r in one])
        assert diff <= RTOL, f"init_from -> {dest} ({load}): {key} differs by {diff:.2e}"
