"""The specification of the routing kernels, in plain PyTorch (and the CPU path).

``slot`` (T, k) is where each of a token's k assignments sits in the expert-contiguous row
order (the grouped matmul's input), -1 where the assignment was dropped over capacity.

- ``gating``: scores (softmax over experts, or a sigmoid each) of router logits (T, E) in
  fp32; the top k per token by score plus an optional selection bias, ties to the lowest
  expert index; the gates (the unbiased scores of the chosen, renormalized over them or
  not); and the probabilities the balance loss averages (the scores, normalized per token
  for sigmoid).
- ``permute``: the rows of x in slot order, ``rows[slot[t, j]] = x[t]``.
- ``combine``: ``y[t] = sum_j gates[t, j] * rows[slot[t, j]]`` over kept slots, in fp32.
"""

from __future__ import annotations

import torch


def router_scores(logits: torch.Tensor, score: str) -> torch.Tensor:
    """Softmax over the experts, or a sigmoid per expert."""
    return logits.softmax(dim=-1) if score == "softmax" else logits.sigmoid()


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest along the last dim, ties to the lowest index.

    Not ``torch.topk``: its choice among equal values depends on the other values (it
    selects, it does not sort), and equal scores are common (the same token at the start
    of two sequences has the same hidden state). Two layouts whose weights differ in the
    last bit would then route differently; a stable sort decides ties the same way always.
    """
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def gating_reference(logits: torch.Tensor, bias: torch.Tensor | None, *, top_k: int,
                     score: str, renormalize: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top (T, k) int64, gates (T, k) fp32, probs (T, E) fp32) of logits (T, E)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32, or fp64
    scores = router_scores(logits, score)
    top = top_indices(scores if bias is None else scores + bias, top_k)
    gates = scores.gather(-1, top)
    if renormalize:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    probs = scores if score == "softmax" else scores / scores.sum(dim=-1, keepdim=True)
    return top, gates, probs


def permute_reference(x: torch.Tensor, slot: torch.Tensor, n_rows: int) -> torch.Tensor:
    """rows (n_rows, d) with rows[slot[t, j]] = x[t]; every row is some kept slot's."""
    k = slot.shape[1]
    token = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)
    flat = slot.reshape(-1)
    kept = flat >= 0
    source = torch.empty(n_rows, dtype=torch.long, device=x.device)
    source[flat[kept]] = token[kept]
    # index_select: its backward (index_add) sums a token's k gradients in a fixed order.
    return torch.index_select(x, 0, source)


def combine_reference(rows: torch.Tensor, gates: torch.Tensor, slot: torch.Tensor
                      ) -> torch.Tensor:
    """y (T, d) fp32 = sum over kept j of gates[t, j] * rows[slot[t, j]]."""
    padded = torch.cat([rows.float(), rows.new_zeros(1, rows.shape[1], dtype=torch.float32)])
    index = torch.where(slot >= 0, slot, rows.shape[0])  # dropped: the zero row
    picked = padded[index]  # (T, k, d)
    return (picked * gates.unsqueeze(-1)).sum(dim=1)
