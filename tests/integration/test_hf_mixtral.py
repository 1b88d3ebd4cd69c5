"""Mixture-of-experts models as Hugging Face Mixtral directories: an export loads in
``transformers.MixtralForCausalLM`` with the logits of the model it came from, and
``checkpoint.init_from_hf`` starts a run from exactly its weights. Tolerance as for Llama
(test_hf_interchange.py): the same fp32 math on both sides, 1e-5 on logits of magnitude ~1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from triforge.__main__ import main as triforge_main
from triforge.launcher.build import build_trainer
from triforge.launcher.config import load_config
from triforge.launcher.env import ProcessEnv
from triforge.launcher.train import train
from triforge.models.hf import read_hf_state_dict
from triforge.parallel.context import ParallelContext

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
BASE = ["model=moe_tiny", "model.tie_embeddings=false", "model.rope_theta=5000",
        "logging.wandb.enabled=false", "logging.progress_bar=false", "trainer.batch_size=4",
        "trainer.seq_len=64", "trainer.eval_every=0", "trainer.sample_at_end=false",
        "optim.warmup_steps=2", "trainer.log_every=1", "optim.lr=3e-3"]
IDS = torch.randint(0, 258, (2, 64), generator=torch.Generator().manual_seed(0))


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(IDS)
    return getattr(out, "logits", out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_overrides):
    root = tmp_path_factory.mktemp("mixtral")
    job = load_config([*BASE, *data_overrides, f"run.dir={root / 'run'}", "trainer.max_steps=6"])
    trainer = train(job, log=lambda *_: None)
    assert triforge_main(["export", f"run.dir={root / 'run'}", f"export.dir={root / 'hf'}",
                          *data_overrides]) == 0
    return trainer, root / "hf"


def test_export_loads_as_mixtral_with_the_same_logits(exported):
    trainer, hf_dir = exported
    hf = transformers.MixtralForCausalLM.from_pretrained(hf_dir).float()
    assert (logits(hf) - logits(trainer.model)).abs().max().item() <= ATOL
    config = json.loads((hf_dir / "config.json").read_text())
    assert (config["model_type"], config["num_local_experts"], config["num_experts_per_tok"],
            config["intermediate_size"]) == ("mixtral", 4, 2, 64)
    files = read_hf_state_dict(hf_dir, tied=False, num_experts=4)  # a transpose each way
    for name, t in trainer.model.state_dict().items():
        assert torch.equal(files[name], t), name


def test_init_from_a_mixtral_directory_starts_from_its_weights(exported, tmp_path,
                                                                data_overrides):
    _, hf_dir = exported
    job = load_config([*BASE, *data_overrides, f"run.dir={tmp_path / 'run'}",
                       f"checkpoint.init_from_hf={hf_dir}"])
    trainer, _ = build_trainer(job, ProcessEnv(), ParallelContext.single(),
                               torch.device("cpu"), log=lambda *_: None)
    hf = transformers.MixtralForCausalLM.from_pretrained(hf_dir).float()
    assert (logits(hf) - logits(trainer.model)).abs().max().item() <= ATOL


@pytest.mark.parametrize(("override", "problem"), [
    ("model.moe.shared_experts=1", "shared experts (Mixtral has none)"),
    ("model.moe.router.bias_update_rate=1e-3", "an expert selection bias"),
])
def test_what_mixtral_cannot_express_is_not_exported(exported, tmp_path, data_overrides,
                                                     capsys, override, problem):
    _, hf_dir = exported
    run_dir = hf_dir.parent / "run"
    assert triforge_main(["export", f"run.dir={run_dir}", f"export.dir={tmp_path / 'out'}",
                          *data_overrides, override]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1, err


def test_init_from_a_mixtral_of_another_shape_is_one_line(exported, tmp_path, data_overrides,
                                                          capsys):
    from triforge.launcher import train as train_cli
    _, hf_dir = exported
    rc = train_cli.main([*BASE, *data_overrides, f"run.dir={tmp_path / 'x'}",
                         "model.moe.num_experts=8", f"checkpoint.init_from_hf={hf_dir}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_local_experts 4 != model.moe.num_experts 8" in err
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_mixtral_files_are_per_expert(exported):
    _, hf_dir = exported
    from safetensors import safe_open
    with safe_open(str(Path(hf_dir) / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in keys
    assert "model.layers.0.block_sparse_moe.gate.weight" in keys
