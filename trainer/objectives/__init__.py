"""Objective plugins. Adding one is a new file plus an entry in ``OBJECTIVES``."""

from __future__ import annotations

from .base import IGNORE_INDEX, Batch, positions_in_documents, summed_cross_entropy
from .clm import CausalLM

OBJECTIVES = {"clm": CausalLM}


def build_objective(name: str, *, reset_positions: bool = False):
    if name not in OBJECTIVES:
        raise ValueError(f"objective '{name}' is not one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](reset_positions=reset_positions)


__all__ = ["IGNORE_INDEX", "OBJECTIVES", "Batch", "build_objective", "positions_in_documents",
           "summed_cross_entropy"]
