"""Schema of the ``data`` config group."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BlendSourceConfig:
    """One source of ``data.blend``: a prepared dataset directory (or, with
    ``format=megatron``, a Megatron prefix), its weight, and its name in ``val_loss/<name>``
    (default: the path's last part)."""

    path: str = ""
    weight: float = 1.0
    name: str = ""
    format: str = "triforge"


@dataclass
class DataConfig:
    """Where tokens come from.

    dir: a prepared dataset directory (``triforge-prepare``). Empty: build one from ``paths``
        (or the built-in corpus when ``paths`` is empty) into ``cache_dir`` on first use.
    paths: text files or folders to build from.
    tokenizer: ``byte`` (256 bytes + special tokens) or ``bpe`` (trained locally).
    format: ``triforge`` (a shard directory) or ``megatron``: ``dir`` is then the PREFIX of a
        Megatron indexed dataset (PREFIX.bin + PREFIX.idx), whose ids come from a tokenizer
        outside triforge: set ``vocab_size`` (and ``eos_id``, default the last id).
    """

    dir: str = ""
    format: str = "triforge"
    vocab_size: int = 0  # format=megatron: the vocabulary the ids come from
    eos_id: int = -1  # format=megatron: end-of-document id (-1: vocab_size - 1)
    # Weighted sources, e.g. [{path: A, weight: 0.9}, {path: B, weight: 0.1}] (trainer/data/
    # blend.py); replaces dir/paths. Replay for continual pretraining is such a blend.
    blend: list[BlendSourceConfig] = field(default_factory=list)
    # triforge-prepare: also write the dataset as Megatron files, output_prefix.{bin,idx}
    output_format: str = "triforge"
    output_prefix: str = ""
    paths: list[str] = field(default_factory=list)
    tokenizer: str = "byte"
    bpe_vocab_size: int = 4096
    val_every: int = 50  # every N-th document goes to the validation split
    text_key: str = "text"  # .jsonl inputs: the field of each line's object holding the text
    prepare_workers: int = 0  # processes that tokenize a build (0: one per core)
    cache_dir: str = "~/.cache/triforge"
    verify_checksums: bool = False
    document_masking: bool = False  # packed windows: tokens attend within their document only
    reset_positions: bool = False  # with document masking: rotary positions restart per document
    num_workers: int = 0
    # Read the next batch's windows in a background thread (trainer/data/prefetch.py). Off
    # by default until the whole suite has run with it on since the exit hang was fixed.
    prefetch: bool = False

    def validate(self) -> None:
        if self.tokenizer not in ("byte", "bpe"):
            raise ValueError(f"data.tokenizer='{self.tokenizer}' must be 'byte' or 'bpe'")
        if self.tokenizer == "bpe" and self.bpe_vocab_size < 300:
            raise ValueError(f"data.bpe_vocab_size({self.bpe_vocab_size}) must be >= 300")
        if self.reset_positions and not self.document_masking:
            raise ValueError("data.reset_positions=true needs data.document_masking=true")
        if self.val_every < 2:
            raise ValueError(f"data.val_every({self.val_every}) must be >= 2")
        if self.prepare_workers < 0 or not self.text_key:
            raise ValueError(f"data.prepare_workers({self.prepare_workers}) must be >= 0 and "
                             "data.text_key non-empty")
        if self.format not in ("triforge", "megatron"):
            raise ValueError(f"data.format='{self.format}' must be 'triforge' or 'megatron'")
        if self.format == "megatron" and not (self.dir and self.vocab_size > 0):
            raise ValueError("data.format=megatron needs data.dir=PREFIX (of PREFIX.bin and "
                             "PREFIX.idx) and data.vocab_size=N (the tokenizer's vocabulary)")
        if self.output_format not in ("triforge", "megatron") or (
                self.output_format == "megatron" and not self.output_prefix):
            raise ValueError(f"data.output_format='{self.output_format}' must be 'triforge' or "
                             "'megatron' (with data.output_prefix=PATH for PATH.bin/.idx)")
        self._validate_blend()
        if self.format == "megatron" and not -1 <= self.eos_id < self.vocab_size:
            raise ValueError(f"data.eos_id({self.eos_id}) must be in [0, data.vocab_size("
                             f"{self.vocab_size})) or -1 (the last id)")

    def _validate_blend(self) -> None:
        names = [source_name(s) for s in self.blend]
        for s in self.blend:
            if not s.path or not (s.weight > 0 and s.weight < float("inf")):
                raise ValueError(f"data.blend source {s.path or '(no path)'}: needs a path and "
                                 f"a finite weight > 0 (got {s.weight})")
            if s.format not in ("triforge", "megatron"):
                raise ValueError(f"data.blend source {s.path}: format='{s.format}' must be "
                                 "'triforge' or 'megatron'")
        if any(s.format == "megatron" for s in self.blend) and self.vocab_size <= 0:
            raise ValueError("data.blend has a megatron source: set data.vocab_size (and "
                             "data.eos_id) for its ids")
        if len(set(names)) != len(names):
            raise ValueError(f"data.blend source names {names} repeat; give each a name")


def source_name(source: BlendSourceConfig) -> str:
    return source.name or source.path.rstrip("/").split("/")[-1]
