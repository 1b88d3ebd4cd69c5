"""Model hyperparameters: the schema behind ``model=`` presets in configs/model/."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """A Llama-style decoder. ``vocab_size=0`` takes the tokenizer's vocabulary, padded up to a
    multiple of ``vocab_multiple_of`` (keeps the embedding shardable and matmuls aligned)."""

    name: str = "small"
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int = 0  # 0: same as n_heads (multi-head attention)
    ffn_hidden: int = 0  # 0: SwiGLU default 8/3 * d_model rounded up to ffn_multiple_of
    ffn_multiple_of: int = 64
    vocab_size: int = 0
    vocab_multiple_of: int = 64
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        raw = int(8 * self.d_model / 3)
        return -(-raw // self.ffn_multiple_of) * self.ffn_multiple_of

    def validate(self) -> None:
        """Raise ValueError naming the field and the rule for impossible shapes."""
        positive = ("d_model", "n_layers", "n_heads", "max_seq_len", "vocab_multiple_of",
                    "ffn_multiple_of", "norm_eps", "rope_theta", "init_std")
        for field in positive:
            if getattr(self, field) <= 0:
                raise ValueError(f"model.{field}({getattr(self, field)}) must be > 0")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.n_heads({self.n_heads}) must divide model.d_model({self.d_model})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim = d_model/n_heads = {self.head_dim} must be even (RoPE)")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"model.n_kv_heads({self.kv_heads}) must divide model.n_heads({self.n_heads})"
            )
        if self.vocab_size < 0 or self.n_kv_heads < 0 or self.ffn_hidden < 0:
            raise ValueError("model.vocab_size, n_kv_heads and ffn_hidden must be >= 0")

    def padded_vocab(self, tokenizer_vocab: int) -> int:
        """The embedding size for a tokenizer with ``tokenizer_vocab`` tokens."""
        if self.vocab_size == 0:
            m = self.vocab_multiple_of
            return -(-tokenizer_vocab // m) * m
        if self.vocab_size < tokenizer_vocab:
            raise ValueError(
                f"model.vocab_size({self.vocab_size}) is smaller than the tokenizer's "
                f"vocabulary({tokenizer_vocab}); set model.vocab_size=0 to size it automatically"
            )
        return self.vocab_size

    def num_params(self, vocab_size: int, *, embedding: bool = True) -> int:
        """Parameter count, computed from the shapes (no model needed)."""
        d, hd = self.d_model, self.head_dim
        attn = d * self.n_heads * hd * 2 + d * self.kv_heads * hd * 2
        block = attn + 3 * d * self.hidden_dim + 2 * d
        head = 0 if self.tie_embeddings else vocab_size * d
        emb = vocab_size * d if embedding else 0
        return self.n_layers * block + d + head + emb
