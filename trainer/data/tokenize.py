"""Tokenize a stream of documents on every core, in order, in bounded memory.

Documents are read in windows of ``WINDOW`` per worker; each window is split among worker
processes (``Pool.map`` keeps the order) and its token arrays are handed on before the next
window is read, so memory holds one window, never the corpus, and the result is the serial
one exactly. A few documents, or a tokenizer whose encoding is a copy (bytes, measured at
~280 MB/s in one process), go through serially: the processes would cost more than they win.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Iterable, Iterator

import numpy as np

from .tokenizer import Tokenizer

WINDOW = 256  # documents per worker and window
SERIAL_BELOW = 64  # documents: fewer than this in the first window are tokenized in-process


def encode_documents(tokenizer: Tokenizer, documents: Iterable[str], *, workers: int
                     ) -> Iterator[np.ndarray]:
    """``tokenizer.encode`` of every document, in order."""
    stream = iter(documents)
    first = list(itertools.islice(stream, WINDOW * max(1, workers)))
    if workers <= 1 or len(first) < SERIAL_BELOW or getattr(tokenizer, "cheap_encode", False):
        yield from map(tokenizer.encode, first)
        yield from map(tokenizer.encode, stream)
        return
    # spawn, not fork: the tokenizers library's thread pool must not be forked
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        window = first
        while window:
            yield from pool.map(tokenizer.encode, window, chunksize=max(1, len(window) //
                                                                        (4 * workers)))
            window = list(itertools.islice(stream, WINDOW * workers))
