"""End-to-end runs of the training entry point on a tiny model and a small corpus."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.state import flat
from triforge.errors import CheckpointError
from triforge.launcher.config import load_config
from triforge.launcher.generate import generate
from triforge.launcher.train import train

BASE = ["model=tiny", "logging.wandb.enabled=false", "logging.progress_bar=false",
        "trainer.batch_size=4", "trainer.seq_len=64", "trainer.eval_every=0",
        "trainer.sample_at_end=false", "optim.warmup_steps=2", "trainer.log_every=1"]


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def run(tmp_path: Path, name: str, data_overrides, *extra: str):
    run_dir = tmp_path / name
    job = load_config([*BASE, *data_overrides, f"run.dir={run_dir}", *extra])
    return train(job, log=lambda *_: None), run_dir


def test_short_run_lowers_loss_and_writes_outputs(tmp_path, data_overrides):
    trainer, run_dir = run(tmp_path, "learn", data_overrides, "trainer.max_steps=40",
                           "optim.lr=3e-3", "trainer.eval_every=20", "trainer.log_every=5")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30, 35, 40]
    for key in ("loss", "lr", "tokens_per_s", "mfu", "grad_norm", "peak_mem_gib"):
        assert all(r[key] is not None for r in records), key
    assert records[0]["loss"] > 4.5 and records[-1]["loss"] < records[0]["loss"] - 1.5
    assert records[-1]["val_loss"] < records[3]["val_loss"] + 1e-6 or records[-1]["val_loss"] < 4
    assert (run_dir / "loss.png").stat().st_size > 10_000
    assert (run_dir / "config.yaml").read_text().count("name: tiny") == 1
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_40"
    assert trainer.state.tokens_seen == 40 * 4 * 64


def test_resume_is_bit_exact(tmp_path, data_overrides):
    common = ("trainer.max_steps=10", "trainer.micro_batch_size=2", "checkpoint.every=5")
    _, straight = run(tmp_path, "straight", data_overrides, *common)
    _, split = run(tmp_path, "split", data_overrides, *common, "trainer.stop_at_step=5")
    assert sorted(losses(split)) == [1, 2, 3, 4, 5]
    trainer, _ = run(tmp_path, "split", data_overrides, *common)  # same command: resumes
    a, b = losses(straight), losses(split)
    assert trainer.state.step == 10
    assert [a[s] for s in range(6, 11)] == [b[s] for s in range(6, 11)]  # bit for bit
    assert a[10] != a[6]


def test_resume_none_refuses_to_overwrite_checkpoints(tmp_path, data_overrides):
    run(tmp_path, "once", data_overrides, "trainer.max_steps=2")
    with pytest.raises(CheckpointError, match="checkpoint.resume=none would overwrite"):
        run(tmp_path, "once", data_overrides, "trainer.max_steps=4", "checkpoint.resume=none")


def test_keep_retains_newest_checkpoints(tmp_path, data_overrides):
    trainer, run_dir = run(tmp_path, "keep", data_overrides, "trainer.max_steps=8",
                           "checkpoint.every=2", "checkpoint.keep=2")
    assert trainer.checkpointer.complete_steps() == [6, 8]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


def test_generate_samples_from_the_latest_checkpoint(tmp_path, data_overrides):
    _, run_dir = run(tmp_path, "gen", data_overrides, "trainer.max_steps=3")
    text = generate([f"run.dir={run_dir}", "generate.prompt=import",
                     "generate.max_new_tokens=20", *data_overrides])
    assert text.startswith("import") and len(text.encode()) > len("import")


def test_cli_reports_config_errors_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "triforge.launcher.train", "trainer.max_steps=-3",
         f"run.dir={tmp_path}/x"], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: config: trainer.max_steps(-3) must be > 0"


def test_run_dir_must_be_a_run_or_new(tmp_path, data_overrides, capsys):
    """A folder of someone else's files, an empty name or a file is refused in one line
    before anything is written; a finished run of ours is accepted again."""
    from triforge.launcher.train import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("theirs: true\n")
    (mine / "loss.png").write_bytes(b"their picture")
    args = [*BASE, *data_overrides, "trainer.max_steps=2"]
    for run_dir, fault in ((mine, "is not a triforge run"), ("", "run.dir is empty"),
                           (mine / "loss.png", "is a file")):
        assert main([*args, f"run.dir={run_dir}"]) == 2
        err = capsys.readouterr().err
        assert fault in err and err.count("\n") == 1, err
    assert (mine / "config.yaml").read_text() == "theirs: true\n"
    assert (mine / "loss.png").read_bytes() == b"their picture"
    ours = tmp_path / "ours"
    assert main([*args, f"run.dir={ours}"]) == 0
    (ours / "metrics.jsonl").unlink()  # still ours: its config.yaml says so
    shutil.rmtree(ours / "checkpoints")
    assert main([*args, f"run.dir={ours}"]) == 0


def test_missing_data_dir_names_the_fix(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "triforge.launcher.train", f"data.dir={tmp_path}/nodata",
         f"run.dir={tmp_path}/y"], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "nodata/index.json not found" in proc.stderr
    assert "triforge-prepare data.dir=" in proc.stderr and proc.stderr.count("\n") == 1


def test_plot_cli_and_module_dispatch(tmp_path, data_overrides):
    _, run_dir = run(tmp_path, "plot", data_overrides, "trainer.max_steps=2")
    out = tmp_path / "cmp.png"
    proc = subprocess.run([sys.executable, "-m", "triforge", "plot", str(run_dir), str(run_dir),
                           "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = subprocess.run([sys.executable, "-m", "triforge", "plot", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "metrics.jsonl not found" in proc.stderr


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_gives_identical_losses(tmp_path, data_overrides, mode):
    common = ("trainer.max_steps=4", "model.n_layers=3", "checkpoint.every=0")
    _, plain = run(tmp_path, "plain", data_overrides, *common)
    _, ckpt = run(tmp_path, mode, data_overrides, *common,
                  f"parallel.activation_checkpoint={mode}", "parallel.ac_every=2")
    assert losses(ckpt) == losses(plain)  # recomputation repeats the same ops: bit for bit


def test_document_masking_trains(tmp_path, data_overrides):
    trainer, run_dir = run(tmp_path, "docs", data_overrides, "trainer.max_steps=6",
                           "data.document_masking=true", "data.reset_positions=true",
                           "trainer.eval_every=3", "optim.lr=3e-3")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < records[0]["loss"]
    assert all(r.get("val_loss") is None or r["val_loss"] > 0 for r in records)


def test_incompatible_checkpoint_lists_mismatching_parameters(tmp_path, data_overrides):
    run(tmp_path, "shape", data_overrides, "trainer.max_steps=2")
    ckpt = tmp_path / "shape" / "checkpoints" / "step_2"
    assert (ckpt / "ranks" / "rank_0.json").is_file()  # this rank's RNG streams
    with pytest.raises(CheckpointError) as err:
        run(tmp_path, "shape", data_overrides, "trainer.max_steps=4", "model.n_layers=3",
            "model.n_kv_heads=4")
    message = str(err.value)
    assert message.startswith(f"checkpoint {ckpt} does not fit this model: ")
    assert "layers.0.attention.wk.weight [32, 64] vs model [64, 64]" in message
    assert "layers.2.attention_norm.weight missing from the checkpoint" in message
    assert message.endswith(f"resume with the model settings in {ckpt / 'config.yaml'} or use "
                            "a new run.dir") and "\n" not in message


def test_async_save_writes_the_same_checkpoints(tmp_path, data_overrides):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save


    common = ("trainer.max_steps=6", "checkpoint.every=2", "checkpoint.keep=0")
    run(tmp_path, "sync", data_overrides, *common)
    trainer, _ = run(tmp_path, "async", data_overrides, *common, "checkpoint.async_save=true")
    assert trainer.checkpointer._pending is None  # the last background save was committed
    for name in ("sync", "async"):
        steps = sorted((tmp_path / name / "checkpoints").glob("step_*"))
        assert [p.name for p in steps] == ["step_2", "step_4", "step_6"]
        for p in steps:
            dcp_to_torch_save(p / "tensors", tmp_path / f"{name}_{p.name}.pt")
    for step in (2, 4, 6):
        a, b = (torch.load(tmp_path / f"{n}_step_{step}.pt", weights_only=True)
                for n in ("sync", "async"))
        flat_a, flat_b = flat(a), flat(b)
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:  # written while the next steps ran, yet the state of its own step
            if torch.is_tensor(flat_a[key]):
                assert torch.equal(flat_a[key], flat_b[key]), key
    assert losses(tmp_path / "sync") == losses(tmp_path / "async")



def test_a_continued_run_starts_from_another_runs_weights_with_its_own_schedule(
        tmp_path, data_overrides):
    """checkpoint.init_from: step 0 of a new run on trained weights (and optionally the
    optimizer state); a restart of the new run resumes its own checkpoints instead."""
    base = [*data_overrides, "model=tiny", "trainer.batch_size=4", "trainer.seq_len=32",
            "logging.wandb.enabled=false", "logging.progress_bar=false", "trainer.eval_every=0",
            "trainer.sample_at_end=false", "trainer.log_every=1", "optim.warmup_steps=1",
            "optim.lr=3e-3"]

    def run(name: str, *extra: str) -> list[dict]:
        train(load_config([*base, f"run.dir={tmp_path / name}", *extra]), log=lambda *_: None)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    old = run("old", "trainer.max_steps=6")
    start = tmp_path / "old" / "checkpoints" / "step_6"
    weights = run("weights", "trainer.max_steps=2", f"checkpoint.init_from={start}")
    both = run("both", "trainer.max_steps=2", f"checkpoint.init_from={start}",
               "checkpoint.load=weights+optimizer")
    assert [r["step"] for r in weights] == [1, 2]  # step 0 again, a new schedule
    # Trained weights on the new run's first batch (its own data cursor: the old run's
    # first batch): far below the old run's first, random-weight loss.
    assert weights[0]["loss"] < old[0]["loss"] - 0.5
    assert both[0]["loss"] == weights[0]["loss"]  # same weights, same batch
    assert both[1]["loss"] != weights[1]["loss"]  # Adam's moments carried over, or not
    again = run("weights", "trainer.max_steps=3", f"checkpoint.init_from={start}")
    assert [r["step"] for r in again] == [1, 2, 3]  # resumed its own step_2, appended step 3


def test_init_from_a_path_that_is_not_a_checkpoint_is_one_line(tmp_path, data_overrides):
    from triforge.errors import CheckpointError
    job = load_config([*data_overrides, "model=tiny", f"run.dir={tmp_path / 'run'}",
                       "logging.wandb.enabled=false", "trainer.max_steps=1",
                       f"checkpoint.init_from={tmp_path}"])
    with pytest.raises(CheckpointError, match=r"is not a checkpoint directory \(step_N"):
        train(job, log=lambda *_: None)
