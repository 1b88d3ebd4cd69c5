"""Schema of the ``data`` config group."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Where tokens come from.

    dir: a prepared dataset directory (``triforge-prepare``). Empty: build one from ``paths``
        (or the built-in corpus when ``paths`` is empty) into ``cache_dir`` on first use.
    paths: text files or folders to build from.
    tokenizer: ``byte`` (256 bytes + special tokens) or ``bpe`` (trained locally).
    """

    dir: str = ""
    paths: list[str] = field(default_factory=list)
    tokenizer: str = "byte"
    bpe_vocab_size: int = 4096
    val_every: int = 50  # every N-th document goes to the validation split
    cache_dir: str = "~/.cache/triforge"
    verify_checksums: bool = False
    document_masking: bool = False  # packed windows: tokens attend within their document only
    reset_positions: bool = False  # with document masking: rotary positions restart per document
    num_workers: int = 0

    def validate(self) -> None:
        if self.tokenizer not in ("byte", "bpe"):
            raise ValueError(f"data.tokenizer='{self.tokenizer}' must be 'byte' or 'bpe'")
        if self.tokenizer == "bpe" and self.bpe_vocab_size < 300:
            raise ValueError(f"data.bpe_vocab_size({self.bpe_vocab_size}) must be >= 300")
        if self.reset_positions and not self.document_masking:
            raise ValueError("data.reset_positions=true needs data.document_masking=true")
        if self.val_every < 2:
            raise ValueError(f"data.val_every({self.val_every}) must be >= 2")
