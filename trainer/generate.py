"""Sampling text from a trained model (no KV cache: short samples for inspection)."""

from __future__ import annotations

import torch
from torch import nn

from .config import GenerateConfig


@torch.no_grad()
def sample_text(
    model: nn.Module, tokenizer, cfg: GenerateConfig, *, device: torch.device,
    max_context: int, seed: int = 0,
) -> str:
    """Continue ``cfg.prompt`` by ``cfg.max_new_tokens`` tokens (temperature, top-k)."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.as_tensor(tokenizer.encode(cfg.prompt), dtype=torch.long, device=device)[None]
    for _ in range(cfg.max_new_tokens):
        logits = model(ids[:, -max_context:])[:, -1].float()
        logits[:, tokenizer.vocab_size :] = float("-inf")  # padding rows of the embedding
        if cfg.temperature <= 0:
            next_id = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / cfg.temperature
            if cfg.top_k > 0:
                kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = torch.multinomial(logits.softmax(-1), 1, generator=gen)
        if next_id.item() == tokenizer.eos_id:
            break
        ids = torch.cat([ids, next_id], dim=1)
    return tokenizer.decode(ids[0].tolist())
