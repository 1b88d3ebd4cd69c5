"""Objective plugins. Adding one is a new file plus an entry in ``OBJECTIVES``.

Every objective is an ``Objective`` (base.py): ``name``, ``special_tokens`` (names of the
tokens it adds), ``token_ids`` (name -> id, allocated from ``tokenizer_vocab`` up, in
``special_tokens`` order), ``vocab_size`` (tokenizer_vocab + len(special_tokens)),
``make_batch(windows)`` and ``loss(logits, labels)``.
"""

from __future__ import annotations

from .base import (
    IGNORE_INDEX,
    Batch,
    Objective,
    positions_by_id,
    positions_in_documents,
    summed_cross_entropy,
)
from .clm import CausalLM
from .config import ObjectiveConfig
from .masked import MaskedLM
from .span import SpanCorruption
from .ul2 import UL2

OBJECTIVES = {"clm": CausalLM, "mlm": MaskedLM, "span": SpanCorruption, "ul2": UL2}


def build_objective(cfg: ObjectiveConfig, *, tokenizer_vocab: int, pad_id: int, seed: int,
                    reset_positions: bool = False) -> Objective:
    """The objective ``cfg.name`` after validating ``cfg``. ``seed`` (>= 0) seeds the
    per-sample noise together with each window's sample id."""
    cfg.validate()
    if seed < 0:
        raise ValueError(f"objective seed({seed}) must be >= 0")
    return OBJECTIVES[cfg.name](cfg, tokenizer_vocab=tokenizer_vocab, pad_id=pad_id, seed=seed,
                                reset_positions=reset_positions)


__all__ = ["IGNORE_INDEX", "OBJECTIVES", "Batch", "Objective", "ObjectiveConfig", "build_objective",
           "positions_by_id", "positions_in_documents", "summed_cross_entropy"]
