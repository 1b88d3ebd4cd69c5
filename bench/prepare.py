"""Tokenization throughput of triforge-prepare: MB/s of text, serial vs one process per
core (the path a build takes), vs the tokenizers library's own multi-threaded encode_batch
(BPE), all on the same documents in the same run.

    python bench/prepare.py [--files 400] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import time

from triforge.trainer.data import BPETokenizer, ByteTokenizer
from triforge.trainer.data.corpus import read_documents, stdlib_files
from triforge.trainer.data.tokenize import encode_documents


def rate(megabytes: float, fn) -> float:
    start = time.perf_counter()
    fn()
    return megabytes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--workers", type=int, default=0, help="0: one per core")
    args = parser.parse_args()
    workers = args.workers or os.cpu_count() or 1
    docs = list(read_documents(stdlib_files()[: args.files]))
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    bpe = BPETokenizer.train(iter(docs[:100]), 4096)
    print(f"{len(docs)} documents, {mb:.1f} MB of text, {workers} workers")
    for name, tok in (("byte", ByteTokenizer()), ("bpe", bpe)):
        serial = rate(mb, lambda t=tok: [t.encode(d) for d in docs])
        parallel = rate(mb, lambda t=tok: list(encode_documents(t, docs, workers=workers)))
        line = f"{name:>5}: serial {serial:7.1f} MB/s  parallel {parallel:7.1f} MB/s " \
               f"(x{parallel / serial:.2f})"
        if name == "bpe":
            batch = rate(mb, lambda: bpe._tok.encode_batch(docs))
            line += f"  tokenizers encode_batch {batch:7.1f} MB/s (parallel / it: " \
                    f"{parallel / batch:.2f})"
        print(line)


if __name__ == "__main__":
    main()
