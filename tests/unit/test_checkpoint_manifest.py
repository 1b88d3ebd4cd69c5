"""Checkpoint manifests: every fault is caught and named, resume falls back to a good one."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from torch import nn

from triforge.errors import CheckpointError
from triforge.trainer import manifest
from triforge.trainer.checkpoint import Checkpointer
from triforge.trainer.config import CheckpointConfig
from triforge.trainer.state import ModelOptimizerState, TrainState

SHARD = "tensors/__0_0.distcp"


class Run:
    """A tiny model, its optimizer and a Checkpointer over ``run_dir``; logs are collected."""

    def __init__(self, run_dir, repair=True, **cfg):
        torch.manual_seed(0)
        self.model = nn.Linear(8, 8)
        self.opt = torch.optim.AdamW(self.model.parameters())
        self.train = TrainState()
        self.logs: list[str] = []
        self.ckpt = Checkpointer(run_dir, CheckpointConfig(**cfg), log=self.logs.append,
                                 repair=repair)

    def save(self, step: int):
        self.train.step = step
        with torch.no_grad():
            self.model.weight.fill_(float(step))  # each checkpoint's content names its step
        return self.ckpt.save(step, ModelOptimizerState([self.model], [self.opt]),
                              {"train": self.train}, config_yaml="seed: 0\n")

    def resume(self) -> int:
        """Find and load the resume checkpoint; the step it held (0: none)."""
        path = self.ckpt.find_resume()
        if path is None:
            return 0
        self.ckpt.load(path, ModelOptimizerState([self.model], [self.opt]), {"train": self.train})
        assert self.model.weight[0, 0].item() == float(self.train.step)
        return self.train.step

    def warnings(self) -> list[str]:
        return [line for line in self.logs if line.startswith("[warn]")]


def truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def delete(path):
    path.unlink()


CORRUPTIONS = {  # name: (file, how, the fault verify must report)
    "truncated_shard": (SHARD, truncate, f"has a truncated {SHARD}"),
    "flipped_byte": (SHARD, flip_byte, f"has an altered {SHARD} (its sha256 differs"),
    "deleted_shard": (SHARD, delete, f"is missing {SHARD}"),
    "deleted_metadata": ("tensors/.metadata", delete, "is missing tensors/.metadata"),
    "deleted_state": ("state.json", delete, "is missing state.json"),
    "deleted_manifest": ("manifest.json", delete,
                         "is incomplete (no manifest.json); it was never committed"),
    "garbled_manifest": ("manifest.json", truncate, "has an unreadable manifest.json"),
}


def test_manifest_lists_every_file_with_its_size_and_sha256(tmp_path):
    run = Run(tmp_path)
    path = run.save(3)
    doc = json.loads((path / "manifest.json").read_text())
    assert doc["format_version"] == manifest.FORMAT_VERSION
    on_disk = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                     if p.is_file() and p.name != "manifest.json")
    assert [e["path"] for e in doc["files"]] == on_disk
    assert {"state.json", "config.yaml", SHARD, "tensors/.metadata"} <= set(on_disk)
    for entry in doc["files"]:
        data = (path / entry["path"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert any(line.startswith("checkpoint step_3 committed in") and "manifest 4 files" in line
               for line in run.logs)
    manifest.verify(path)


def test_hashing_streams_in_chunks(tmp_path, monkeypatch):
    data = bytes(range(256)) * 41 + b"tail"  # not a multiple of the chunk size
    (tmp_path / "blob").write_bytes(data)
    monkeypatch.setattr(manifest, "_CHUNK_BYTES", 7)
    assert manifest.sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_detected_and_named(tmp_path, name):
    rel, corrupt, fault = CORRUPTIONS[name]
    run = Run(tmp_path)
    path = run.save(2)
    corrupt(path / rel)
    with pytest.raises(CheckpointError, match=f"^checkpoint {path} ") as info:
        run.ckpt.verify(path)
    assert fault in str(info.value)
    assert "\n" not in str(info.value)
    explicit = Run(tmp_path, resume=str(path))
    with pytest.raises(CheckpointError, match="checkpoint .*step_2 "):
        explicit.ckpt.find_resume()


def test_quick_check_sees_sizes_and_presence_but_not_content(tmp_path):
    path = Run(tmp_path).save(1)
    flip_byte(path / SHARD)
    assert manifest.check(path, hashes=False) is None
    assert "altered" in manifest.check(path)
    truncate(path / SHARD)
    assert "truncated" in manifest.check(path, hashes=False)


def test_resume_falls_back_from_a_corrupted_newest_checkpoint(tmp_path):
    run = Run(tmp_path)
    for step in (4, 8, 12):
        run.save(step)
    flip_byte(tmp_path / "checkpoints" / "step_12" / SHARD)
    fresh = Run(tmp_path)
    assert fresh.resume() == 8
    rejected, moved = fresh.warnings()
    assert rejected == (f"[warn] checkpoint step_12 rejected: it has an altered {SHARD} (its "
                        "sha256 differs from manifest.json); falling back to step_8")
    assert moved.startswith("[warn] moved step_12 aside to step_12.rejected-")


def test_resume_scans_newest_first_when_latest_is_missing(tmp_path):
    run = Run(tmp_path)
    for step in (4, 8):
        run.save(step)
    (tmp_path / "checkpoints" / "latest").unlink()
    fresh = Run(tmp_path)
    assert fresh.resume() == 8
    assert len(fresh.warnings()) == 1 and "latest is missing" in fresh.warnings()[0]


def test_resume_takes_the_newest_sound_checkpoint_even_if_latest_lags(tmp_path):
    """What a crash between a checkpoint's rename and the pointer update leaves."""
    run = Run(tmp_path)
    for step in (4, 6):
        run.save(step)
    (tmp_path / "checkpoints" / "latest").write_text("step_4\n")
    fresh = Run(tmp_path)
    assert fresh.resume() == 6
    assert "names step_4, but step_6 is newer" in fresh.warnings()[0]


def test_a_rejected_checkpoint_no_longer_counts_as_saved(tmp_path):
    """After falling back from a corrupt step_12 to step_8, step 12 must be saved again:
    the damaged directory is moved aside (kept), not left to pass for a saved step."""
    run = Run(tmp_path)
    for step in (4, 8, 12):
        run.save(step)
    flip_byte(tmp_path / "checkpoints" / "step_12" / SHARD)
    fresh = Run(tmp_path)
    assert fresh.resume() == 8
    assert fresh.ckpt.complete_steps() == [4, 8]
    aside = [p.name for p in (tmp_path / "checkpoints").iterdir() if ".rejected-" in p.name]
    assert len(aside) == 1 and aside[0].startswith("step_12.rejected-")
    fresh.save(12)
    assert manifest.check(tmp_path / "checkpoints" / "step_12") is None
    assert Run(tmp_path).resume() == 12
    flip_byte(tmp_path / "checkpoints" / "step_12" / SHARD)
    reader = Run(tmp_path, repair=False)  # export and generate only read
    assert reader.resume() == 8 and reader.ckpt.complete_steps() == [4, 8, 12]


def test_manifest_entries_stay_inside_the_checkpoint(tmp_path):
    path = Run(tmp_path).save(2)
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    doc = json.loads((path / "manifest.json").read_text())
    for name in ("../../secret.txt", str(outside)):
        entry = {"path": name, "size": outside.stat().st_size,
                 "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()}
        bad = {**doc, "files": [*doc["files"], entry]}
        (path / "manifest.json").write_text(json.dumps(bad))
        assert manifest.check(path) == (f"lists {name!r} in manifest.json, a path outside "
                                        "the checkpoint")
    (path / "manifest.json").write_text(json.dumps({**doc, "files": []}))
    assert "which manifest.json does not list" in manifest.check(path)


def test_resume_refuses_to_start_fresh_when_no_checkpoint_verifies(tmp_path):
    run = Run(tmp_path)
    for step in (4, 8):
        run.save(step)
    truncate(tmp_path / "checkpoints" / "step_4" / SHARD)
    (tmp_path / "checkpoints" / "step_8" / "manifest.json").unlink()
    fresh = Run(tmp_path)
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints .* verifies \\(newest: "
                                              "step_8 is incomplete"):
        fresh.resume()
    assert [w.split(":")[0] for w in fresh.warnings()] == [
        "[warn] checkpoint step_8 rejected", "[warn] checkpoint step_4 rejected"]


def test_resume_starts_fresh_without_checkpoints_and_none_keeps_refusing(tmp_path):
    assert Run(tmp_path).resume() == 0
    Run(tmp_path).save(2)
    with pytest.raises(CheckpointError, match="checkpoint.resume=none would overwrite"):
        Run(tmp_path, resume="none").resume()


def test_keep_retains_the_newest_sound_checkpoints(tmp_path):
    run = Run(tmp_path, keep=2)
    for step in range(1, 6):
        run.save(step)
    assert run.ckpt.complete_steps() == [4, 5]
    (tmp_path / "checkpoints" / "step_5" / SHARD).unlink()
    run.save(6)
    # step_5 is broken so it takes no slot: the good step_4 survives alongside step_6.
    assert run.ckpt.complete_steps() == [4, 5, 6]
    run.save(7)
    assert run.ckpt.complete_steps() == [6, 7]


def test_keep_never_deletes_the_checkpoint_just_written(tmp_path):
    run = Run(tmp_path, keep=1)
    run.save(5)
    run.save(2)  # e.g. a run resumed from an explicit older checkpoint
    assert run.ckpt.complete_steps() == [2]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_2"
    assert Run(tmp_path).resume() == 2


def test_uncommitted_tmp_directories_are_ignored_then_cleaned(tmp_path):
    run = Run(tmp_path)
    run.save(4)
    root = tmp_path / "checkpoints"
    shutil.copytree(root / "step_4", root / "step_9.tmp")  # a crash just before the rename
    fresh = Run(tmp_path)
    assert fresh.resume() == 4
    assert fresh.warnings() == ["[warn] ignoring step_9.tmp: a save that never committed"]
    with pytest.raises(CheckpointError, match="never committed \\(.tmp\\)"):
        Run(tmp_path, resume=str(root / "step_9.tmp")).ckpt.find_resume()
    fresh.save(5)
    assert not list(root.glob("*.tmp"))
    assert "removed step_9.tmp, left by a save that never committed" in fresh.logs


def test_an_unknown_manifest_format_is_refused(tmp_path):
    path = Run(tmp_path).save(1)
    doc = json.loads((path / "manifest.json").read_text())
    doc["format_version"] = manifest.FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="has manifest format 2 but this triforge reads"):
        manifest.verify(path)


@pytest.mark.parametrize("pointer", ["bytes", "directory"])
def test_an_unreadable_latest_pointer_is_a_warning_not_a_traceback(tmp_path, pointer):
    run = Run(tmp_path)
    for step in (4, 8):
        run.save(step)
    latest = tmp_path / "checkpoints" / "latest"
    latest.unlink()
    if pointer == "bytes":
        latest.write_bytes(b"\xff\xfe\x00step")
    else:
        latest.mkdir()
    fresh = Run(tmp_path)
    assert fresh.resume() == 8
    assert "is missing or unreadable" in fresh.warnings()[0]


def test_damaged_state_files_are_one_line_errors(tmp_path):
    """state.json or a rank's RNG file that parses but does not fit (re-hashed, so the
    manifest passes): a CheckpointError naming the file, not a KeyError."""
    run = Run(tmp_path)
    path = run.save(2)
    (path / "state.json").write_text(json.dumps({"train": {"step": "two"}}))
    manifest.write_manifest(path)
    with pytest.raises(CheckpointError, match=r"state.json has a malformed 'train' entry") as err:
        Run(tmp_path).resume()
    assert "\n" not in str(err.value)


def test_unwritable_checkpoints_fail_before_training(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where checkpoints go")
    with pytest.raises(CheckpointError, match=r"cannot write checkpoints into .*checkpoints"):
        Run(tmp_path).ckpt.check_writable()
