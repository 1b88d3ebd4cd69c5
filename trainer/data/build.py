"""Find or build the dataset a run trains on."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from triforge.errors import DataError

from .config import DataConfig
from .corpus import read_documents, source_files, sources_fingerprint
from .megatron import MegatronDataset
from .shards import Dataset, write_dataset
from .tokenizer import BPETokenizer, ByteTokenizer, IdTokenizer


def _tokenizer_key(cfg: DataConfig) -> str:
    return json.dumps({"tokenizer": cfg.tokenizer, "bpe_vocab": cfg.bpe_vocab_size,
                       "val_every": cfg.val_every, "text_key": cfg.text_key})


def build_dataset(cfg: DataConfig, out_dir: Path, *, log=print) -> Path:
    """Tokenize the configured sources into ``out_dir`` (replacing what is there)."""
    files = source_files(cfg.paths)
    fingerprint = sources_fingerprint(files, _tokenizer_key(cfg))
    what = "the Python standard library" if not cfg.paths else f"{len(files)} files"
    log(f"building dataset from {what} ({len(files)} documents) into {out_dir}")
    if cfg.tokenizer == "bpe":
        tokenizer = BPETokenizer.train(read_documents(files, text_key=cfg.text_key),
                                       cfg.bpe_vocab_size)
    else:
        tokenizer = ByteTokenizer()
    workers = cfg.prepare_workers or os.cpu_count() or 1
    start = time.perf_counter()
    out = write_dataset(out_dir, read_documents(files, text_key=cfg.text_key), tokenizer,
                        val_every=cfg.val_every, fingerprint=fingerprint, workers=workers)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    seconds = max(time.perf_counter() - start, 1e-9)
    log(f"tokenized {megabytes:.1f} MB in {seconds:.1f} s ({megabytes / seconds:.1f} MB/s, "
        f"{cfg.tokenizer} tokenizer, up to {workers} worker processes)")
    return out


def cached_dataset_dir(cfg: DataConfig) -> Path:
    """The cache entry for the configured sources and tokenizer."""
    files = source_files(cfg.paths)
    fingerprint = sources_fingerprint(files, _tokenizer_key(cfg))
    name = "stdlib" if not cfg.paths else "custom"
    return Path(cfg.cache_dir).expanduser() / f"{name}-{cfg.tokenizer}-{fingerprint}"


def open_dataset(cfg: DataConfig, *, build_if_missing: bool, log=print
                 ) -> Dataset | MegatronDataset:
    """Open ``data.dir`` (a shard directory or, with ``data.format=megatron``, a Megatron
    dataset prefix), or the cached build of the sources (building it on first use)."""
    if cfg.format == "megatron":
        eos = cfg.eos_id if cfg.eos_id >= 0 else cfg.vocab_size - 1
        return MegatronDataset(Path(cfg.dir).expanduser(), IdTokenizer(cfg.vocab_size, eos),
                               val_every=cfg.val_every, verify_checksums=cfg.verify_checksums)
    if cfg.dir:
        root = Path(cfg.dir).expanduser()
        if not (root / "index.json").exists():
            raise DataError(
                f"{root}/index.json not found; build it with "
                f"`triforge-prepare data.dir={root}` (add data.paths=[...] for your own text)"
            )
        return Dataset(root, verify_checksums=cfg.verify_checksums)
    root = cached_dataset_dir(cfg)
    if not (root / "index.json").exists():
        if not build_if_missing:
            raise DataError(f"dataset cache {root} is not built yet; run triforge-prepare")
        build_dataset(cfg, root, log=log)
    return Dataset(root, verify_checksums=cfg.verify_checksums)
