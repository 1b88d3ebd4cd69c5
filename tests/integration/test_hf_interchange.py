"""Hugging Face interchange: ``transformers.LlamaForCausalLM`` loaded from an export computes
the logits of the triforge model it came from, whatever layout wrote the checkpoint, and
``checkpoint.init_from_hf`` starts a run from exactly the weights of such a directory.

Logit tolerance: both sides run the same fp32 math (rotate-half RoPE, RMSNorm in fp32,
SwiGLU), so the only possible difference is the order of floating-point sums inside
attention kernels: ~1e-6 on logits of magnitude ~1 (this machine measures exactly 0). 1e-5
is 10x that yet ~100x below what a real conversion bug causes (a wrong rope_theta moves
these logits by ~1e-3, q/k in interleaved RoPE order by ~5e-3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.runs import run_layout
from triforge.__main__ import main as triforge_main
from triforge.launcher import train as train_cli
from triforge.launcher.build import build_trainer
from triforge.launcher.config import load_config
from triforge.launcher.env import ProcessEnv
from triforge.launcher.train import train
from triforge.models.hf import read_hf_state_dict
from triforge.parallel.context import ParallelContext

transformers = pytest.importorskip("transformers")  # in the test extra; CI always has it

ATOL = 1e-5
# rope_theta != HF's default 10000, so a theta lost on the way would show in the logits.
BASE = ["model=tiny", "model.rope_theta=5000", "logging.wandb.enabled=false",
        "logging.progress_bar=false", "trainer.batch_size=4", "trainer.seq_len=64",
        "trainer.eval_every=0", "trainer.sample_at_end=false", "optim.warmup_steps=2",
        "trainer.log_every=1"]
IDS = torch.randint(0, 258, (2, 64), generator=torch.Generator().manual_seed(0))


def hf_logits(hf_dir: Path) -> torch.Tensor:
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir).float().eval()
    with torch.no_grad():
        return model(IDS).logits


def our_logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(IDS)


def export_cli(run_dir: Path, out: Path, data_overrides, *extra: str) -> Path:
    # Through ``python -m triforge export`` dispatch, in-process.
    assert triforge_main(["export", f"run.dir={run_dir}", f"export.dir={out}",
                          *data_overrides, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_overrides):
    """tie -> (trainer after 6 steps, its export): each variant is trained once."""
    cache = {}

    def get(tie: bool):
        if tie not in cache:
            root = tmp_path_factory.mktemp(f"tie_{tie}")
            job = load_config([*BASE, *data_overrides, f"run.dir={root / 'run'}",
                               f"model.tie_embeddings={tie}", "trainer.max_steps=6",
                               "optim.lr=3e-3"])
            trainer = train(job, log=lambda *_: None)
            cache[tie] = trainer, export_cli(root / "run", root / "hf", data_overrides)
        return cache[tie]
    return get


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_export_loads_in_transformers_with_the_same_logits(exported, tie):
    trainer, hf_dir = exported(tie)
    ours = our_logits(trainer.model)
    assert (hf_logits(hf_dir) - ours).abs().max().item() <= ATOL
    # Renaming only: the files hold the trained weights bit for bit.
    files = read_hf_state_dict(hf_dir, tied=tie)
    for name, t in trainer.model.state_dict().items():
        assert torch.equal(files[name], t), name
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["vocab_size"] == 320 and trainer.model.vocab_size == 320  # 258 padded to 64s
    assert config["tie_word_embeddings"] is tie
    assert (config["eos_token_id"], config["pad_token_id"], config["bos_token_id"]) == (256, 257, None)


def build_at_step0(run_dir: Path, data_overrides, *extra: str, log=lambda *_: None):
    job = load_config([*BASE, *data_overrides, f"run.dir={run_dir}", *extra])
    trainer, _ = build_trainer(job, ProcessEnv(), ParallelContext.single(),
                               torch.device("cpu"), log=log)
    return trainer


def test_init_from_hf_starts_from_the_exported_weights(exported, tmp_path, data_overrides):
    _, hf_dir = exported(False)
    messages = []
    trainer = build_at_step0(tmp_path / "new", data_overrides, "model.tie_embeddings=false",
                             f"checkpoint.init_from_hf={hf_dir}", log=messages.append)
    files = read_hf_state_dict(hf_dir, tied=False)
    assert all(torch.equal(files[n], t) for n, t in trainer.model.state_dict().items())
    assert (hf_logits(hf_dir) - our_logits(trainer.model)).abs().max().item() <= ATOL
    assert f"initial weights from {hf_dir} (checkpoint.init_from_hf)" in messages
    trainer.save()  # now the run has a checkpoint: resuming it wins over the HF weights
    messages.clear()
    build_at_step0(tmp_path / "new", data_overrides, "model.tie_embeddings=false",
                   f"checkpoint.init_from_hf={hf_dir}", log=messages.append)
    assert any("init_from_hf" in m and "ignored: resuming" in m for m in messages)


def test_init_from_a_model_saved_by_transformers(tmp_path, data_overrides):
    """A directory transformers itself wrote (its config.json format, not our exporter's)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=320, rope_theta=5000.0, rms_norm_eps=1e-5,
        max_position_embeddings=128,
        tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # HF initializes norms to 1; random ones test their mapping too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path / "hf")
    trainer = build_at_step0(tmp_path / "run", data_overrides, "model.tie_embeddings=false",
                             f"checkpoint.init_from_hf={tmp_path / 'hf'}")
    assert (hf_logits(tmp_path / "hf") - our_logits(trainer.model)).abs().max().item() <= ATOL


def test_init_from_hf_shape_mismatch_is_one_clear_line(exported, tmp_path, data_overrides,
                                                       capsys):
    _, hf_dir = exported(False)
    rc = train_cli.main([*BASE, *data_overrides, f"run.dir={tmp_path / 'x'}",
                         "model.tie_embeddings=false", "model.d_model=128",
                         f"checkpoint.init_from_hf={hf_dir}"])
    assert rc == 2
    assert capsys.readouterr().err == (
        "error: init_from_hf: hidden_size 64 != model.d_model 128; intermediate_size 192 != "
        "model.ffn_hidden 384; head_dim 16 != d_model/n_heads 32 (set the model.* overrides "
        f"to match {hf_dir}/config.json, or export with this model config)\n")


def test_export_step_that_does_not_exist_names_the_steps(exported, tmp_path, data_overrides,
                                                        capsys):
    trainer, hf_dir = exported(False)
    run_dir = hf_dir.parent / "run"
    assert triforge_main(["export", f"run.dir={run_dir}", "export.step=4", *data_overrides]) == 2
    assert capsys.readouterr().err == (
        f"error: export.step=4: no step_4 in {run_dir}/checkpoints (it has steps [6])\n")


def test_export_never_overwrites_what_is_not_an_export(exported, tmp_path, data_overrides,
                                                       capsys):
    trainer, hf_dir = exported(False)
    run_dir = hf_dir.parent / "run"
    (tmp_path / "notes.txt").write_text("mine")
    for out, fault in ((tmp_path / "notes.txt", "is a file"), (tmp_path, "holds other files")):
        assert triforge_main(["export", f"run.dir={run_dir}", f"export.dir={out}",
                              *data_overrides]) == 2
        err = capsys.readouterr().err
        assert fault in err and err.count("\n") == 1, err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    export_cli(run_dir, hf_dir, data_overrides)  # an earlier export is replaced


# Head-sharded DTensors and pipeline stages (each rank loads a subset of the parameters),
# and DeepSpeed ZeRO-3 (the weights loaded before deepspeed.initialize partitions them and
# makes its fp32 master copies); fsdp2 shards with DTensors as tp2 does and passes too, but
# costs another ~15 s.
LAYOUTS = {"tp2": ["parallel.tp=2"], "pp2": ["parallel.pp=2", "trainer.micro_batch_size=2"],
           "zero3": ["parallel.engine=deepspeed", "parallel.zero_stage=3"]}


@pytest.mark.distributed
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_export_of_a_2_process_checkpoint_initialized_from_hf(exported, tmp_path,
                                                             data_overrides, layout):
    """A 2-process run starts from an export (init_from_hf broadcast into the shards or
    stages) and saves a sharded checkpoint; its export must give back the same tensors.
    lr=1e-30 makes the one training step a no-op bit for bit (each update is < 1e-29, below
    half an fp32 ulp of every weight), so the sharded checkpoint's true values are known."""
    if layout == "zero3":
        pytest.importorskip("deepspeed")
    _, hf_dir = exported(False)
    common = [*BASE, "model.tie_embeddings=false", "trainer.max_steps=1", "checkpoint.every=0",
              "optim.lr=1e-30", "optim.weight_decay=0"]
    run_layout(tmp_path / layout, 2, [*LAYOUTS[layout], f"checkpoint.init_from_hf={hf_dir}"],
               data_overrides, common)
    out = export_cli(tmp_path / layout, tmp_path / "hf_out", data_overrides)
    before, after = read_hf_state_dict(hf_dir, tied=False), read_hf_state_dict(out, tied=False)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)
