"""triforge-prepare: the built-in corpus and user text into shards that training reads."""

from __future__ import annotations

import json

from triforge.launcher.config import load_config
from triforge.launcher.prepare import main as prepare_main
from triforge.launcher.train import train
from triforge.trainer.data import DataConfig, open_dataset


def test_default_corpus_is_the_stdlib_and_builds_on_first_use(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path))
    messages = []
    ds = open_dataset(cfg, build_if_missing=True, log=messages.append)
    assert "Python standard library" in messages[0]
    train = ds.index["splits"]["train"]
    assert train["num_docs"] > 500 and train["num_tokens"] > 5_000_000
    assert ds.index["splits"]["val"]["num_docs"] > 5
    assert len(messages) == 2 and "MB/s" in messages[1]  # the build reports its throughput
    again = open_dataset(cfg, build_if_missing=True, log=messages.append)  # cached: no rebuild
    assert len(messages) == 2 and again.root == ds.root


def test_prepare_bpe_into_a_dir_then_train_on_it(tmp_path, corpus_dir, capsys):
    out = tmp_path / "bpe"
    args = [f"data.dir={out}", f"data.paths=[{corpus_dir}]", "data.tokenizer=bpe",
            "data.bpe_vocab_size=600", "data.val_every=4"]
    assert prepare_main(args) == 0
    printed = capsys.readouterr().out
    assert "train:" in printed and "tokens" in printed
    index = json.loads((out / "index.json").read_text())
    assert index["tokenizer"]["kind"] == "bpe" and index["tokenizer"]["vocab_size"] == 600
    assert (out / "tokenizer.json").is_file()
    job = load_config([*args, "model=tiny", f"run.dir={tmp_path}/run", "trainer.max_steps=3",
                       "trainer.batch_size=2", "trainer.seq_len=32", "logging.wandb.enabled=false",
                       "logging.progress_bar=false", "trainer.eval_every=2", "optim.warmup_steps=1"])
    trainer = train(job, log=lambda *_: None)
    assert trainer.model.vocab_size == 640  # 600 padded up to a multiple of 64
    assert trainer.state.step == 3


def test_prepare_refuses_to_replace_what_is_not_a_dataset(tmp_path, corpus_dir, capsys,
                                                          monkeypatch):
    """Only a triforge dataset (its index.json) is ever replaced: never a user folder, the
    working directory or one of its parents; each refusal leaves everything in place."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    source = [f"data.paths=[{corpus_dir}]"]
    for target, fault in ((mine, "not a triforge dataset"), (".", "working directory"),
                          ("..", "working directory or one of its parents"),
                          (mine / "thesis.tex", "is a file")):
        assert prepare_main([f"data.dir={target}", *source]) == 2
        err = capsys.readouterr().err
        assert fault in err and err.count("\n") == 1, err
    assert (mine / "thesis.tex").read_text() == "years of work" and work.is_dir()
    assert prepare_main([f"data.dir={tmp_path / 'ds'}", *source]) == 0
    assert prepare_main([f"data.dir={tmp_path / 'ds'}", *source]) == 0  # a dataset: replaced
    (tmp_path / "ds" / "index.json").write_text("{damaged")  # the rebuild its errors suggest
    assert prepare_main([f"data.dir={tmp_path / 'ds'}", *source]) == 0


def test_a_dataset_written_as_megatron_files_trains_exactly_like_the_original(tmp_path,
                                                                              corpus_dir):
    """Same documents, same train/val split, same windows: the same losses, bit for bit."""
    out, prefix = tmp_path / "shards", tmp_path / "mega" / "corpus"
    source = [f"data.paths=[{corpus_dir}]", "data.val_every=4"]
    assert prepare_main([f"data.dir={out}", *source, "data.output_format=megatron",
                         f"data.output_prefix={prefix}"]) == 0
    common = ["model=tiny", "trainer.max_steps=4", "trainer.batch_size=2", "trainer.seq_len=32",
              "logging.wandb.enabled=false", "logging.progress_bar=false",
              "trainer.eval_every=2", "trainer.log_every=1", "optim.warmup_steps=1",
              "trainer.sample_at_end=false",
              "data.val_every=4"]
    runs = {"shards": [f"data.dir={out}"],
            "megatron": ["data.format=megatron", f"data.dir={prefix}", "data.vocab_size=258",
                         "data.eos_id=256"]}  # the byte tokenizer's vocabulary and <eos>
    records = {}
    for name, data in runs.items():
        train(load_config([*common, *data, f"run.dir={tmp_path}/run_{name}"]), log=lambda *_: None)
        lines = (tmp_path / f"run_{name}" / "metrics.jsonl").read_text().splitlines()
        records[name] = [(r["loss"], r.get("val_loss")) for r in map(json.loads, lines)]
    assert len(records["shards"]) == 4 and records["shards"][1][1] is not None
    assert records["megatron"] == records["shards"]
