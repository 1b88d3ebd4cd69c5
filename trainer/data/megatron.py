"""Megatron-LM indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``): our own memory-mapped
reader, and a writer (``triforge-prepare data.output_format=megatron``).

The index, little-endian, as ``megatron.core.datasets.indexed_dataset`` writes it::

    b"MMIDIDX\\x00\\x00"                 magic, 9 bytes
    <Q version (1)   <B dtype code   <Q sequence count S   <Q document-index length D + 1
    int32[S]   sequence lengths (tokens)
    int64[S]   sequence byte offsets into PREFIX.bin
    int64[D+1] document indices: the first sequence of each document, then S
    int8[S]    sequence modes (multimodal datasets only; not used here)

``PREFIX.bin`` holds the tokens of every sequence back to back in that dtype. A document is
a run of sequences; where it starts is what document masking needs. Megatron's files carry
no train/validation split (Megatron splits by documents at run time): here the last
``D // data.val_every`` documents are validation and the rest training, both views of one
memory map, so nothing is copied. That is the number of documents ``triforge-prepare`` puts
in validation, and its writer puts the training documents first: a triforge dataset written
as Megatron files reads back as the same two splits.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from triforge.errors import DataError

from .shards import TokenSplit

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
               7: np.float32, 8: np.uint16}
TOKEN_CODES = (1, 3, 4, 5, 8)  # integer types that hold non-negative token ids
_HEADER = struct.Struct("<QBQQ")  # after the magic: version, dtype code, S, D + 1


class MegatronIndex:
    """The parsed ``.idx``: token dtype, sequence lengths and byte offsets, document starts."""

    def __init__(self, path: Path):
        fix = "re-create it with Megatron's preprocess_data.py or triforge-prepare"
        raw = _read(path, fix)
        if raw[:len(MAGIC)] != MAGIC:
            raise DataError(f"{path} is not a Megatron indexed dataset index (bad magic "
                            f"{raw[:len(MAGIC)]!r}); {fix}")
        if len(raw) < len(MAGIC) + _HEADER.size:
            raise DataError(f"{path} is truncated inside its header; {fix}")
        version, code, n_seq, n_doc_index = _HEADER.unpack_from(raw, len(MAGIC))
        if version != VERSION:
            raise DataError(f"{path} has index version {version}; only version {VERSION} is "
                            "read")
        if code not in TOKEN_CODES:
            raise DataError(f"{path} has dtype code {code} "
                            f"({np.dtype(DTYPE_CODES[code]).name if code in DTYPE_CODES else '?'})"
                            ", not an integer token type")
        self.dtype = np.dtype(DTYPE_CODES[code])
        start = len(MAGIC) + _HEADER.size
        need = start + 4 * n_seq + 8 * n_seq + 8 * n_doc_index
        if len(raw) < need:
            raise DataError(f"{path} is truncated: {len(raw)} bytes, its header promises "
                            f"{need}; {fix}")
        self.lengths = np.frombuffer(raw, np.int32, n_seq, start).astype(np.int64)
        self.pointers = np.frombuffer(raw, np.int64, n_seq, start + 4 * n_seq)
        self.doc_index = np.frombuffer(raw, np.int64, n_doc_index, start + 12 * n_seq)
        self._check(path, fix)

    def _check(self, path: Path, fix: str) -> None:
        expected = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]) * self.dtype.itemsize
        if len(self.lengths) and not np.array_equal(self.pointers, expected):
            raise DataError(f"{path}: sequence offsets are not contiguous; {fix}")
        docs = self.doc_index
        if (len(docs) < 1 or docs[0] != 0 or docs[-1] != len(self.lengths)
                or np.any(np.diff(docs) <= 0)):
            raise DataError(f"{path}: document indices do not partition its "
                            f"{len(self.lengths)} sequences; {fix}")

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def doc_starts(self) -> np.ndarray:
        """Token offset of every document's first token."""
        return self.pointers[self.doc_index[:-1]] // self.dtype.itemsize


def _read(path: Path, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} not found; data.format=megatron reads PREFIX.bin and "
                        f"PREFIX.idx with data.dir=PREFIX") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc}); {fix}") from None


def open_megatron(prefix: Path, *, val_every: int) -> dict[str, TokenSplit]:
    """The train and val splits of ``prefix``'s ``.bin``/``.idx`` (see the module doc)."""
    index = MegatronIndex(Path(f"{prefix}.idx"))
    bin_path = Path(f"{prefix}.bin")
    size = bin_path.stat().st_size if bin_path.is_file() else None
    if size is None:
        raise DataError(f"{bin_path} not found; it belongs beside {prefix}.idx")
    if size != index.num_tokens * index.dtype.itemsize:
        raise DataError(f"{bin_path} has {size} bytes but {prefix}.idx describes "
                        f"{index.num_tokens * index.dtype.itemsize}; the pair is truncated or "
                        "mismatched: re-create both")
    tokens = (np.memmap(bin_path, dtype=index.dtype, mode="r") if size
              else np.zeros(0, index.dtype))
    starts = index.doc_starts()
    n_val = len(starts) // val_every
    cut = int(starts[len(starts) - n_val]) if n_val else len(tokens)
    return {"train": TokenSplit(tokens[:cut], starts[: len(starts) - n_val]),
            "val": TokenSplit(tokens[cut:], starts[len(starts) - n_val:] - cut)}


def write_megatron(prefix: Path, documents: list[np.ndarray], dtype: np.dtype) -> None:
    """Write ``documents`` (token id arrays) as ``prefix.bin`` / ``prefix.idx``, one sequence
    per document, through temporary files renamed into place."""
    code = {np.dtype(v): k for k, v in DTYPE_CODES.items()}[np.dtype(dtype)]
    lengths = np.array([len(d) for d in documents], dtype=np.int32)
    pointers = (np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)[:-1]])
                * np.dtype(dtype).itemsize).astype(np.int64)
    doc_index = np.arange(len(documents) + 1, dtype=np.int64)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_bin, tmp_idx = Path(f"{prefix}.bin.tmp"), Path(f"{prefix}.idx.tmp")
    with open(tmp_bin, "wb") as f:
        for doc in documents:
            f.write(np.asarray(doc, dtype=dtype).tobytes())
    with open(tmp_idx, "wb") as f:
        f.write(MAGIC + _HEADER.pack(VERSION, code, len(documents), len(doc_index)))
        f.write(lengths.tobytes() + pointers[: len(documents)].tobytes() + doc_index.tobytes())
    tmp_bin.rename(f"{prefix}.bin")
    tmp_idx.rename(f"{prefix}.idx")


class MegatronDataset:
    """A Megatron ``PREFIX.bin``/``.idx`` pair opened as a dataset: the same ``split`` and
    ``tokenizer`` as a triforge shard directory. The ids come from a tokenizer outside
    triforge, so the vocabulary size (and the end-of-document id) are configured."""

    def __init__(self, prefix: Path, tokenizer, *, val_every: int, verify_checksums: bool):
        self.root = Path(prefix)
        self.tokenizer = tokenizer
        self._splits = open_megatron(self.root, val_every=val_every)
        if verify_checksums:  # Megatron's files carry no checksum: check the ids' range
            for split in self._splits.values():
                largest = int(split.tokens.max()) if len(split.tokens) else -1
                if largest >= tokenizer.vocab_size or (len(split.tokens)
                                                       and int(split.tokens.min()) < 0):
                    raise DataError(f"{self.root}.bin holds token id {largest}, outside "
                                    f"data.vocab_size({tokenizer.vocab_size}); set the "
                                    "tokenizer's vocabulary size")

    def split(self, name: str) -> TokenSplit:
        return self._splits[name]
