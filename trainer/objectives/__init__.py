"""Objective plugins. Adding one is a new file plus an entry in ``OBJECTIVES``."""

from __future__ import annotations

from .base import IGNORE_INDEX, Batch, summed_cross_entropy
from .clm import CausalLM

OBJECTIVES = {"clm": CausalLM}


def build_objective(name: str):
    if name not in OBJECTIVES:
        raise ValueError(f"objective '{name}' is not one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]()


__all__ = ["IGNORE_INDEX", "OBJECTIVES", "Batch", "build_objective", "summed_cross_entropy"]
