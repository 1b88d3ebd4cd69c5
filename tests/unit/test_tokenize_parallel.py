"""Tokenizing on several processes gives the serial result exactly, in order, for both
tokenizers; JSONL inputs stream one document per line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from triforge.errors import DataError
from triforge.trainer.data import BPETokenizer, ByteTokenizer
from triforge.trainer.data.corpus import read_documents
from triforge.trainer.data.tokenize import SERIAL_BELOW, WINDOW, encode_documents

DOCS = [f"document {i}: " + "word " * (i % 17) + "ünïcödé" * (i % 3) for i in range(700)]


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_parallel_tokenization_is_the_serial_result_in_order(kind, monkeypatch):
    tok = ByteTokenizer() if kind == "byte" else BPETokenizer.train(iter(DOCS), 300)
    monkeypatch.setattr(tok, "cheap_encode", False, raising=False)  # workers even for bytes
    assert len(DOCS) > WINDOW * 2 > SERIAL_BELOW  # several windows, each split among workers
    serial = [tok.encode(d) for d in DOCS]
    parallel = list(encode_documents(tok, iter(DOCS), workers=2))
    assert len(parallel) == len(serial)
    assert all(np.array_equal(a, b) for a, b in zip(parallel, serial, strict=True))


def test_jsonl_lines_are_documents_and_a_bad_line_names_its_place(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n', encoding="utf-8")
    assert list(read_documents([good])) == ["one", "two"]
    keyed = tmp_path / "b.jsonl"
    keyed.write_text(json.dumps({"body": "three"}) + "\n", encoding="utf-8")
    assert list(read_documents([keyed], text_key="body")) == ["three"]
    with pytest.raises(DataError, match=r"b.jsonl:1 has no string 'text' field; set "
                                        r"data.text_key"):
        list(read_documents([keyed]))
    broken = tmp_path / "c.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c.jsonl:2 is not valid JSON"):
        list(read_documents([broken]))
