"""``triforge-prepare [data.* overrides]``: build token shards.

Without ``data.dir`` the dataset goes to the cache that ``triforge-train`` looks in; with it,
to that directory (then train with the same ``data.dir=...``). ``data.paths=[a.txt,dir/]``
builds from your own text instead of the built-in corpus. ``data.output_format=megatron
data.output_prefix=PATH`` also writes it as a Megatron indexed dataset, PATH.bin + PATH.idx
(training documents first, then validation ones: ``data.format=megatron`` reads back the
same two splits).
"""

from __future__ import annotations

import sys
from pathlib import Path

from triforge.errors import TriforgeError
from triforge.trainer.data import build_dataset, cached_dataset_dir
from triforge.trainer.data.megatron import write_megatron
from triforge.trainer.data.shards import Dataset, TokenSplit

from .config import load_config


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        job = load_config(args)
        out = Path(job.data.dir).expanduser() if job.data.dir else cached_dataset_dir(job.data)
        build_dataset(job.data, out)
        dataset = Dataset(out, verify_checksums=True)
        if job.data.output_format == "megatron":
            prefix = Path(job.data.output_prefix).expanduser()
            docs = [d for name in ("train", "val") for d in documents(dataset.split(name))]
            write_megatron(prefix, docs, dataset.dtype)
            print(f"megatron: {len(docs)} documents -> {prefix}.bin, {prefix}.idx")
    except TriforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, meta in dataset.index["splits"].items():
        print(f"{name}: {meta['num_tokens']:,} tokens in {meta['num_docs']} documents")
    print(f"tokenizer: {dataset.index['tokenizer']}  ->  {out}")
    return 0


def documents(split: TokenSplit) -> list:
    """The split's documents as token arrays (views of its memory map)."""
    ends = [*split.doc_offsets[1:], len(split.tokens)]
    return [split.tokens[a:b] for a, b in zip(split.doc_offsets, ends, strict=True)]


if __name__ == "__main__":
    sys.exit(main())
