"""Token shards: one flat token array per split plus a JSON index.

Layout of a dataset directory::

    index.json          format, tokenizer, dtype, fingerprint, per-split token counts and sha256
    train.bin val.bin   token ids, uint16 (vocab < 65536) or uint32, documents separated by <eos>
    train.docs.npy ...  int64 start offset of every document (for document masking)
    tokenizer.json      BPE only

Files are written to a temporary directory and renamed into place, so an interrupted build
never leaves a half-written dataset that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triforge.errors import DataError

from .tokenize import encode_documents
from .tokenizer import Tokenizer, load_tokenizer

FORMAT = "triforge-shards/1"
SPLITS = ("train", "val")


def _sha256_and_max(path: Path, dtype: np.dtype) -> tuple[str, int]:
    """The file's sha256 and its largest token id, in one pass."""
    h, largest = hashlib.sha256(), -1
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            if len(chunk) >= dtype.itemsize:
                whole = len(chunk) - len(chunk) % dtype.itemsize
                largest = max(largest, int(np.frombuffer(chunk[:whole], dtype=dtype).max()))
    return h.hexdigest(), largest


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


class _SplitWriter:
    """Appends a split's documents to ``SPLIT.bin`` as they come (memory: one document and
    the offsets), hashing the bytes on the way; ``finish`` writes the offsets."""

    def __init__(self, out: Path, split: str, dtype: np.dtype):
        self.out, self.split, self.dtype = out, split, dtype
        self.file = open(out / f"{split}.bin", "wb")  # noqa: SIM115 (closed in finish)
        self.hash, self.offsets, self.tokens = hashlib.sha256(), [], 0

    def add(self, ids: np.ndarray) -> None:
        data = ids.astype(self.dtype).tobytes()
        self.file.write(data)
        self.hash.update(data)
        self.offsets.append(self.tokens)
        self.tokens += len(ids)

    def finish(self) -> dict:
        self.file.close()
        np.save(self.out / f"{self.split}.docs.npy", np.array(self.offsets, dtype=np.int64))
        return {"num_tokens": self.tokens, "num_docs": len(self.offsets),
                "sha256": self.hash.hexdigest()}


def check_replaceable(out_dir: Path) -> None:
    """Refuse to let a dataset build replace anything but a dataset: the working directory
    or one of its parents, a file, or a folder of other files (nothing is changed then)."""
    here = Path.cwd().resolve()
    if out_dir == here or out_dir in here.parents:
        raise DataError(f"data.dir={out_dir} is the working directory or one of its parents; "
                        "a dataset build replaces its directory: choose a new one")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"data.dir={out_dir} is a file; choose a new directory for the dataset")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_dataset(out_dir):
        raise DataError(f"data.dir={out_dir} holds files that are not a triforge dataset's "
                        f"(only {', '.join(sorted(_BUILD_FILES))}); choose an empty or new "
                        "directory (nothing was changed)")


_BUILD_FILES = {"index.json", "tokenizer.json",
                *(f"{split}{ext}" for split in ("train", "val") for ext in (".bin", ".docs.npy"))}


def _is_dataset(root: Path) -> bool:
    """Only files a build writes, index.json and train.bin among them: a dataset, even one
    whose index is damaged (rebuilding it is the fix its errors name)."""
    names = {p.name for p in root.iterdir()}
    return {"index.json", "train.bin"} <= names <= _BUILD_FILES


def write_dataset(
    out_dir: Path,
    documents,
    tokenizer: Tokenizer,
    *,
    val_every: int,
    fingerprint: str,
    workers: int = 1,
) -> Path:
    """Tokenize ``documents`` (an iterable, streamed) into ``out_dir`` with ``workers``
    processes; every ``val_every``-th document is validation.

    ``out_dir`` is replaced whole once the new dataset is complete, so it must be new,
    empty, or a triforge dataset already (``check_replaceable``)."""
    out_dir = Path(out_dir).expanduser().resolve()
    check_replaceable(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {name: _SplitWriter(tmp, name, dtype) for name in SPLITS}
    eos = np.array([tokenizer.eos_id], dtype=np.int64)
    for i, ids in enumerate(encode_documents(tokenizer, documents, workers=workers)):
        split = "val" if val_every and i % val_every == val_every - 1 else "train"
        writers[split].add(np.concatenate([ids, eos]))
    index = {
        "format": FORMAT,
        "tokenizer": tokenizer.describe(),
        "dtype": dtype.name,
        "fingerprint": fingerprint,
        "eos_id": tokenizer.eos_id,
        "splits": {name: writer.finish() for name, writer in writers.items()},
    }
    if hasattr(tokenizer, "save"):
        tokenizer.save(tmp / "tokenizer.json")
    (tmp / "index.json").write_text(json.dumps(index, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


@dataclass
class TokenSplit:
    """A memory-mapped split: ``tokens`` (flat ids) and ``doc_offsets`` (document starts)."""

    tokens: np.ndarray
    doc_offsets: np.ndarray


class Dataset:
    """An opened dataset directory, validated against its index before any training."""

    def __init__(self, root: Path, *, verify_checksums: bool = False):
        self.root = Path(root)
        self.index = _read_index(self.root)
        self.tokenizer = load_tokenizer(self.root, self.index["tokenizer"])
        self.dtype = np.dtype(self.index["dtype"])
        self._verify = verify_checksums

    def split(self, name: str) -> TokenSplit:
        meta = self.index["splits"].get(name)
        if meta is None:
            raise DataError(f"{self.root}/index.json has no '{name}' split; rebuild the dataset")
        path = self.root / f"{name}.bin"
        _check_file(path, meta["num_tokens"] * self.dtype.itemsize, self.root)
        if self._verify:
            digest, largest = _sha256_and_max(path, self.dtype)
            if digest != meta["sha256"]:
                raise DataError(f"{path} does not match its checksum in index.json; "
                                f"{_fix(self.root)}")
            if largest >= self.tokenizer.vocab_size:
                raise DataError(f"{path} holds token id {largest}, outside the tokenizer's "
                                f"vocabulary of {self.tokenizer.vocab_size}; {_fix(self.root)}")
        tokens = np.memmap(path, dtype=self.dtype, mode="r") if meta["num_tokens"] else None
        docs_path = self.root / f"{name}.docs.npy"
        try:
            offsets = np.load(docs_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{docs_path} is missing or corrupt ({exc}); {_fix(self.root)}") from None
        if tokens is None:
            tokens = np.zeros(0, dtype=self.dtype)
        return TokenSplit(tokens=tokens, doc_offsets=offsets)


def _fix(root: Path) -> str:
    return f"rebuild it with `triforge-prepare data.dir={root}` (or delete {root})"


def _check_file(path: Path, expected_bytes: int, root: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path} is missing; {_fix(root)}")
    size = path.stat().st_size
    if size != expected_bytes:
        raise DataError(
            f"{path} has {size} bytes but index.json expects {expected_bytes}; {_fix(root)}"
        )


def _read_index(root: Path) -> dict:
    path = root / "index.json"
    if not path.is_file():
        raise DataError(f"{path} not found; build the dataset with `triforge-prepare data.dir={root}`")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); {_fix(root)}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path} is not a {FORMAT} index; {_fix(root)}")
    fault = _index_fault(index)
    if fault:
        raise DataError(f"{path} {fault}; {_fix(root)}")
    return index


def _index_fault(index: dict) -> str | None:
    """What is wrong with the fields of an index, as a phrase, or None."""
    if not isinstance(index.get("tokenizer"), dict):
        return "has no tokenizer entry"
    if index.get("dtype") not in ("uint16", "uint32"):
        return f"has dtype {index.get('dtype')!r}, not uint16 or uint32"
    if not isinstance(index.get("eos_id"), int):
        return "has no integer eos_id"
    splits = index.get("splits")
    if not isinstance(splits, dict) or "train" not in splits:
        return "has no train split"
    for name, meta in splits.items():
        if not (isinstance(meta, dict) and isinstance(meta.get("num_tokens"), int)
                and meta["num_tokens"] >= 0 and isinstance(meta.get("sha256"), str)):
            return f"has a malformed '{name}' split (num_tokens, sha256)"
    return None
