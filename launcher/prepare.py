"""``triforge-prepare [data.* overrides]``: build token shards.

Without ``data.dir`` the dataset goes to the cache that ``triforge-train`` looks in; with it,
to that directory (then train with the same ``data.dir=...``). ``data.paths=[a.txt,dir/]``
builds from your own text instead of the built-in corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

from triforge.errors import TriforgeError
from triforge.trainer.data import build_dataset, cached_dataset_dir
from triforge.trainer.data.shards import Dataset

from .config import load_config


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        job = load_config(args)
        out = Path(job.data.dir).expanduser() if job.data.dir else cached_dataset_dir(job.data)
        build_dataset(job.data, out)
        dataset = Dataset(out, verify_checksums=True)
    except TriforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, meta in dataset.index["splits"].items():
        print(f"{name}: {meta['num_tokens']:,} tokens in {meta['num_docs']} documents")
    print(f"tokenizer: {dataset.index['tokenizer']}  ->  {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
