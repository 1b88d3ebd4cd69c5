"""Rotary position embeddings (Su et al. 2021) in the real-valued rotate-half form.

Rotate-half (as in Hugging Face Llama) keeps tensors real, so DTensor sharding over heads and
torch.compile both see plain elementwise ops.
"""

from __future__ import annotations

import torch


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape positions.shape + (head_dim,), in fp32.

    ``positions`` is (s,) or (b, s); per-sequence positions let packed documents restart at 0.
    """
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    )
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rope_for(
    cos_table: torch.Tensor, sin_table: torch.Tensor, seq: int, positions: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of precomputed (max_seq_len, d) tables: 0..seq-1, or ``positions`` (s,)/(b, s)."""
    if positions is None:
        return cos_table[:seq], sin_table[:seq]
    return cos_table[positions], sin_table[positions]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x_bshd: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (b, s, h, d) queries or keys; cos/sin are (s, d) or (b, s, d)."""
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x32 = x_bshd.float()
    return (x32 * cos + _rotate_half(x32) * sin).type_as(x_bshd)
