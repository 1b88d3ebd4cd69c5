"""Which (query tile, key tile) pairs of an attention mask can hold allowed pairs.

Pure torch, computed per launch from the mask spec alone (positions, prefix lengths, per-tile
min/max document ids), so the Triton kernels loop only over tiles that matter.
"""

from __future__ import annotations

import torch

from .mask import AttentionMask


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tile_doc_range(doc_ids: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile (min, max) doc id, (b, n_tiles) each; the last tile is padded by repetition."""
    b, s = doc_ids.shape
    pad = _cdiv(s, block) * block - s
    padded = torch.cat([doc_ids, doc_ids[:, -1:].expand(b, pad)], dim=1).view(b, -1, block)
    return padded.amin(-1), padded.amax(-1)


def _tile_classes(mask: AttentionMask, seq_q: int, seq_k: int, block_q: int, block_k: int,
                  device):
    """(any, all) booleans of shape (b or 1, n_q_tiles, n_k_tiles): tile may hold an allowed
    pair / every pair of the tile is allowed and in bounds (no elementwise mask needed).
    Tiles are local (row 0 = the first query), the mask is judged at the mask's positions."""
    q_start, k_start = mask.starts(seq_q, seq_k)
    q0 = torch.arange(_cdiv(seq_q, block_q), device=device)[:, None] * block_q
    k0 = torch.arange(_cdiv(seq_k, block_k), device=device)[None, :] * block_k
    q_last, k_last = (q0 + block_q).clamp(max=seq_q) - 1, (k0 + block_k).clamp(max=seq_k) - 1
    any_ = torch.ones_like(q0 + k0, dtype=torch.bool)[None]
    all_ = ((q0 + block_q <= seq_q) & (k0 + block_k <= seq_k))[None]
    # Positions of each tile's first and last row.
    gq0, gq_last, gk0, gk_last = q0 + q_start, q_last + q_start, k0 + k_start, k_last + k_start
    if mask.kind == "causal":
        any_, all_ = any_ & (gk0 <= gq_last), all_ & (gk_last <= gq0)
    elif mask.kind == "prefix":
        prefix = mask.prefix_len.to(device).view(-1, 1, 1)
        any_ = any_ & ((gk0 <= gq_last) | (gk0 < prefix))
        all_ = all_ & ((gk_last <= gq0) | (gk_last < prefix))
    if mask.doc_ids is not None:
        docs = mask.doc_ids.to(device)
        q_min, q_max = _tile_doc_range(docs[:, q_start:q_start + seq_q], block_q)
        k_min, k_max = _tile_doc_range(docs[:, k_start:k_start + seq_k], block_k)
        overlap = (k_min[:, None, :] <= q_max[:, :, None]) & (
            k_max[:, None, :] >= q_min[:, :, None]
        )
        any_ = any_ & overlap
        one_doc = (q_min == q_max)[:, :, None] & (k_min == k_max)[:, None, :]
        all_ = all_ & one_doc & (q_min[:, :, None] == k_min[:, None, :])
    return any_, all_ & any_


def tile_loop_bounds(
    mask: AttentionMask, seq_q: int, seq_k: int, block_q: int, block_k: int, *, outer: str,
    device,
) -> torch.Tensor:
    """int32 (b or 1, n_outer_tiles, 4): [lo, ulo, uhi, hi) offsets along the inner axis.

    outer="query": per query tile, key offsets (forward, dQ); outer="key": per key tile, query
    offsets (dK/dV). Tiles outside [lo, hi) are skipped; [ulo, uhi) needs no elementwise mask.
    """
    any_, all_ = _tile_classes(mask, seq_q, seq_k, block_q, block_k, device)
    inner_block = block_k
    if outer == "key":
        any_, all_, inner_block = any_.transpose(1, 2), all_.transpose(1, 2), block_q
    n = any_.shape[-1]
    has_any, has_all = any_.any(-1), all_.any(-1)
    lo = torch.where(has_any, any_.int().argmax(-1), 0)
    hi = torch.where(has_any, n - any_.flip(-1).int().argmax(-1), 0)
    ulo = torch.where(has_all, all_.int().argmax(-1), lo)
    # The fully-allowed run ends at the first tile after ulo that is not fully allowed.
    after = ~all_ & (torch.arange(n, device=device) >= ulo[..., None])
    uhi = torch.where(after.any(-1), after.int().argmax(-1), n)
    uhi = torch.where(has_all, uhi, lo)
    return (torch.stack([lo, ulo, uhi, hi], dim=-1) * inner_block).to(torch.int32).contiguous()
