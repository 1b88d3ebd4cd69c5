"""Megatron indexed datasets: our reader on files megatron-core's own builder writes, our
writer read back by megatron-core, and one-line errors for damaged files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from triforge.errors import DataError
from triforge.trainer.data.megatron import MegatronIndex, open_megatron, write_megatron

with warnings.catch_warnings():  # it warns that Transformer Engine and apex are missing
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # megatron-core on numpy 2

# Five documents; the third is two sequences (Megatron's sentence-split documents).
DOCS = [[1, 2, 3, 0], [4, 5, 0], [6, 7, 8, 9, 10, 0], [11, 0], [12, 13, 14, 0]]
SEQUENCES = {2: [2, 4]}


def megatron_files(prefix, dtype=np.uint16) -> None:
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for i, doc in enumerate(DOCS):
        builder.add_document(torch.tensor(doc), SEQUENCES.get(i, [len(doc)]))
    builder.finalize(f"{prefix}.idx")


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_files_written_by_megatron_core_read_as_train_and_val_documents(tmp_path, dtype):
    megatron_files(tmp_path / "corpus", dtype)
    index = MegatronIndex(tmp_path / "corpus.idx")
    assert index.dtype == np.dtype(dtype) and len(index.lengths) == 6  # 6 sequences
    splits = open_megatron(tmp_path / "corpus", val_every=2)  # 5 // 2 = 2 val documents
    train, val = splits["train"], splits["val"]
    flat = [t for doc in DOCS for t in doc]
    assert np.asarray(train.tokens).tolist() == flat[:13]
    assert np.asarray(val.tokens).tolist() == flat[13:]
    assert train.doc_offsets.tolist() == [0, 4, 7]  # the 2-sequence document starts once
    assert val.doc_offsets.tolist() == [0, 2]


def test_our_writer_is_read_back_by_megatron_core(tmp_path):
    docs = [np.array(d, dtype=np.int64) for d in DOCS]
    write_megatron(tmp_path / "ours", docs, np.dtype(np.uint16))
    theirs = IndexedDataset(str(tmp_path / "ours"))
    assert len(theirs) == len(DOCS)
    assert [theirs[i].tolist() for i in range(len(DOCS))] == DOCS
    assert theirs.document_indices.tolist() == list(range(len(DOCS) + 1))


def _damage(path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: _damage(p.with_suffix(".idx"), 0, b"XXXX"), "bad magic"),
    (lambda p: _damage(p.with_suffix(".idx"), 9, (2).to_bytes(8, "little")),
     "index version 2; only version 1"),
    (lambda p: _damage(p.with_suffix(".idx"), 17, bytes([7])), r"dtype code 7 \(float32\)"),
    (lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:40]),
     "is truncated: 40 bytes"),
    (lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:20]),
     "truncated inside its header"),
    (lambda p: p.with_suffix(".bin").write_bytes(p.with_suffix(".bin").read_bytes()[:-2]),
     "the pair is truncated or mismatched"),
    (lambda p: p.with_suffix(".bin").unlink(), "corpus.bin not found"),
])
def test_damaged_files_are_one_line_errors(tmp_path, damage, message):
    megatron_files(tmp_path / "corpus")
    damage(tmp_path / "corpus")
    with pytest.raises(DataError, match=message) as info:
        open_megatron(tmp_path / "corpus", val_every=2)
    assert "\n" not in str(info.value)
