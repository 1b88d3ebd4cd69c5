"""Llama-style decoder: embedding, pre-norm blocks (attention + SwiGLU), final norm, head."""

from __future__ import annotations

import torch
from torch import nn

from triforge.kernels.attention import AttentionMask

from .attention import Attention, scaled_out_std
from .config import ModelConfig
from .feed_forward import build_feed_forward
from .norms import RMSNorm
from .rope import rope_cos_sin
from .side_outputs import BlockControls

CAUSAL = AttentionMask("causal")


class Block(nn.Module):
    """Pre-norm block ``layer_id``: h = x + s * Attn(norm(x)); out = h + s * FFN(norm(h)),
    with s = ``controls.residual_scale`` (1 unless the trainer says otherwise)."""

    def __init__(self, cfg: ModelConfig, layer_id: int, *, attention_backend: str):
        super().__init__()
        self.layer_id = layer_id
        self.controls = BlockControls()  # plain attributes: not state, not in checkpoints
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_impl)
        self.attention = Attention(cfg, backend=attention_backend)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_impl)
        self.feed_forward = build_feed_forward(cfg, layer_id, self.controls)

    def forward(self, x, rope_cos, rope_sin, mask: AttentionMask, positions) -> torch.Tensor:
        attn = self.attention(self.attention_norm(x), rope_cos=rope_cos, rope_sin=rope_sin,
                              mask=mask, positions=positions)
        scale = self.controls.residual_scale
        x = x + (attn if scale == 1.0 else attn * scale)
        ffn = self.feed_forward(self.ffn_norm(x))
        return x + (ffn if scale == 1.0 else ffn * scale)


class Transformer(nn.Module):
    """Decoder-only transformer. Blocks sit in an ``nn.ModuleDict`` keyed by layer index, so
    parameter names stay the same when pipeline stages drop some blocks (``layers.3.*``) and
    checkpoints load into any layout. ``tok_embeddings``/``norm``/``output`` may be None on
    stages that do not own them."""

    def __init__(self, cfg: ModelConfig, *, vocab_size: int, attention_backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.tok_embeddings = nn.Embedding(vocab_size, cfg.d_model)
        self.layers = nn.ModuleDict(
            {str(i): Block(cfg, i, attention_backend=attention_backend)
             for i in range(cfg.n_layers)}
        )
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_impl)
        self.output = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.tie_weights()
        # Rotary tables: derived values, not state (rebuilt by init_buffers, not checkpointed).
        self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, cfg.head_dim),
                             persistent=False)
        self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, cfg.head_dim),
                             persistent=False)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        mask: AttentionMask = CAUSAL,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens (b, s) -> logits (b, s, vocab). A pipeline stage without the embedding takes
        hidden states (b, s, d) instead, and one without the head returns them.

        ``positions`` (s,) or (b, s) defaults to 0..s-1; packed documents may restart them.
        """
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        for block in self.layers.values():
            if block.controls.keep:  # a dropped block is the identity and costs nothing
                h = block(h, self.rope_cos, self.rope_sin, mask, positions)
        h = self.norm(h) if self.norm is not None else h
        return self.output(h) if self.output is not None else h

    def tie_weights(self) -> None:
        """With ``tie_embeddings``, make the head use the embedding's weight, where this
        model (or stage) holds both. Called again after anything that re-creates parameters
        (``to_empty``, tensor parallelism's sharding), which would silently untie them."""
        if self.cfg.tie_embeddings and self.tok_embeddings is not None and self.output is not None:
            self.output.weight = self.tok_embeddings.weight

    def stage_tied_weight(self) -> nn.Parameter | None:
        """A tied weight this pipeline stage holds without its partner: the embedding on the
        first stage, the head's copy of it on the last. The two copies start equal and get
        the sum of both gradients every step, so they stay equal (Megatron's embedding
        group); None when the tie is within this model or there is none."""
        if not self.cfg.tie_embeddings or (self.tok_embeddings is None) == (self.output is None):
            return None
        return self.tok_embeddings.weight if self.output is None else self.output.weight

    def tied_head_copy(self) -> nn.Parameter | None:
        """On the last stage of a tied pipeline, the head's copy of the embedding: a
        duplicate that the gradient norm must not count twice."""
        w = self.stage_tied_weight()
        return w if w is not None and self.output is not None else None

    def blocks_controls(self) -> dict[int, BlockControls]:
        """Layer index -> the controls of each block this model (or stage) holds. Read
        through any wrapper (activation checkpointing, FSDP), so the trainer can set them
        before each step on every pipeline stage alike."""
        return {int(key): block.controls for key, block in self.layers.items()}

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Compute the rotary tables (after ``to_empty``, on the buffers' device)."""
        positions = torch.arange(self.cfg.max_seq_len, device=self.rope_cos.device)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    @torch.no_grad()
    def init_weights(self, *, generator_seed: int | None = None) -> None:
        """Initialize every parameter in place (after ``to_empty`` from the meta device).

        The order of initialization is fixed, so one seed gives the same weights whatever
        device the model was materialized on.
        """
        if generator_seed is not None:
            torch.manual_seed(generator_seed)
        std = self.cfg.init_std
        out_std = scaled_out_std(std, self.cfg.n_layers)
        if self.tok_embeddings is not None:
            nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=std)
        for block in self.layers.values():
            block.attention_norm.reset_parameters()
            block.ffn_norm.reset_parameters()
            block.attention.init_weights(std, out_std)
            block.feed_forward.init_weights(std, out_std)
        if self.norm is not None:
            self.norm.reset_parameters()
        if self.output is not None and not self.cfg.tie_embeddings:
            nn.init.trunc_normal_(self.output.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)


def build_model(
    cfg: ModelConfig,
    *,
    vocab_size: int,
    attention_backend: str = "auto",
    device: torch.device | str = "meta",
) -> Transformer:
    """Construct the model without allocating memory (``device='meta'`` by default).

    Parallelism is applied to the meta model, then ``materialize`` allocates and initializes.
    """
    cfg.validate()
    with torch.device(device):
        return Transformer(cfg, vocab_size=vocab_size, attention_backend=attention_backend)


def materialize(model: Transformer, device: torch.device | str, *, seed: int) -> Transformer:
    """Allocate a meta-device model on ``device`` and initialize it from ``seed``."""
    model.to_empty(device=device)
    model.tie_weights()  # to_empty breaks the tie
    model.init_buffers()
    model.init_weights(generator_seed=seed)
    return model
