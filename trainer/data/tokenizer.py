"""Tokenizers: byte-level (default, nothing to train) and BPE trained locally.

Special tokens follow the base vocabulary in a fixed order, so their ids are part of the
dataset's identity (recorded in the shard index) and of every checkpoint trained on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from triforge.errors import DataError

SPECIAL_TOKENS = ("<eos>", "<pad>")
TOKENIZER_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids) -> str: ...

    def describe(self) -> dict: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0-255; special tokens come after."""

    cheap_encode = True  # a copy of the bytes: worker processes would only add overhead

    def __init__(self) -> None:
        self.vocab_size = 256 + len(SPECIAL_TOKENS)
        self.eos_id = 256 + SPECIAL_TOKENS.index("<eos>")
        self.pad_id = 256 + SPECIAL_TOKENS.index("<pad>")

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")

    def describe(self) -> dict:
        return {"kind": "byte", "vocab_size": self.vocab_size}


class IdTokenizer:
    """Token ids of a tokenizer triforge does not have (a Megatron dataset's): the
    vocabulary size and end-of-document id as configured; text in or out is shown as ids
    (a prompt is a list of integers, a sample prints its ids)."""

    def __init__(self, vocab_size: int, eos_id: int) -> None:
        self.vocab_size, self.eos_id, self.pad_id = vocab_size, eos_id, eos_id

    def encode(self, text: str) -> np.ndarray:
        try:
            ids = [int(t) for t in text.replace(",", " ").split()]
        except ValueError:
            ids = []
        return np.array(ids or [self.eos_id], dtype=np.int64)

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)

    def describe(self) -> dict:
        return {"kind": "ids", "vocab_size": self.vocab_size, "eos_id": self.eos_id}


class BPETokenizer:
    """Byte-level BPE from the ``tokenizers`` library, stored next to the shards."""

    def __init__(self, tok) -> None:
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eos_id = tok.token_to_id("<eos>")
        self.pad_id = tok.token_to_id("<pad>")

    @classmethod
    def train(cls, texts, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        self._tok.save(str(path))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def describe(self) -> dict:
        return {"kind": "bpe", "vocab_size": self.vocab_size, "file": TOKENIZER_FILE}


def load_tokenizer(dataset_dir: Path, description: dict) -> Tokenizer:
    """The tokenizer a dataset was built with, from its index entry."""
    kind = description.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        path = Path(dataset_dir) / TOKENIZER_FILE
        if not path.is_file():
            raise DataError(f"{path} is missing; rebuild the dataset with triforge-prepare")
        try:
            return BPETokenizer.load(path)
        except Exception as exc:  # the tokenizers library raises its own kinds
            raise DataError(f"{path} is not a tokenizer file ({str(exc).splitlines()[0]}); "
                            "rebuild the dataset with triforge-prepare") from None
    raise DataError(f"unknown tokenizer {json.dumps(description)} in {dataset_dir}/index.json")
