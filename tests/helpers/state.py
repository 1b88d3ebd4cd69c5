"""Comparing saved training state."""

from __future__ import annotations

# Unit roundoff of the low-precision compute dtypes: the bound of mixed-precision tests.
UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11}


def flat(tree, prefix="") -> dict:
    """A nested state dict as one level of dotted keys."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix: tree}
