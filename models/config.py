"""Model hyperparameters: the schema behind ``model=`` presets in configs/model/."""

from __future__ import annotations

from dataclasses import dataclass, field

from triforge.kernels.rmsnorm import IMPLS as NORM_IMPLS

from .moe.config import MoEConfig


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
    norm_impl: str = "torch"  # torch | triton (our fused kernels) | apex (kernels/rmsnorm)
    tie_embeddings: bool = False
    init_std: float = 0.02
    moe: MoEConfig = field(default_factory=MoEConfig)  # num_experts=0: dense

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
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name}({getattr(self, name)}) must be > 0")
        for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden",
                     "ffn_multiple_of", "vocab_size", "vocab_multiple_of", "max_seq_len"):
            if getattr(self, name) >= 2**31:  # tensor sizes are 64-bit: products must fit
                raise ValueError(f"model.{name}({getattr(self, name)}) must be < 2**31")
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
        if self.norm_impl not in NORM_IMPLS:
            raise ValueError(f"model.norm_impl='{self.norm_impl}' is not one of {NORM_IMPLS}")
        self.moe.validate(n_layers=self.n_layers)
        hidden = self.moe.expert_hidden or self.hidden_dim
        if self.moe.enabled and self.moe.grouped_mm and (self.d_model % 8 or hidden % 8):
            raise ValueError(f"model.moe.grouped_mm needs model.d_model({self.d_model}) and "
                             f"the expert hidden size({hidden}) to be multiples of 8 (16-byte "
                             "rows); change them or set model.moe.grouped_mm=false")

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

    def num_params(self, vocab_size: int, *, embedding: bool = True, active: bool = False
                   ) -> int:
        """Parameter count, computed from the shapes (no model needed). ``active``: what one
        token uses, counting top_k of the routed experts (plus router and shared experts),
        as MFU should (torchtitan's convention)."""
        d, hd = self.d_model, self.head_dim
        attn = d * self.n_heads * hd * 2 + d * self.kv_heads * hd * 2
        ffn = sum(self._ffn_params(i, active=active) for i in range(self.n_layers))
        head = 0 if self.tie_embeddings else vocab_size * d
        emb = vocab_size * d if embedding else 0
        return self.n_layers * (attn + 2 * d) + ffn + d + head + emb

    def _ffn_params(self, layer_id: int, *, active: bool) -> int:
        moe, d = self.moe, self.d_model
        if not moe.is_moe_layer(layer_id):
            return 3 * d * self.hidden_dim
        expert = 3 * d * (moe.expert_hidden or self.hidden_dim)
        routed = moe.top_k if active else moe.num_experts
        return d * moe.num_experts + expert * (routed + moe.shared_experts)
