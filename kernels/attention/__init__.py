"""Attention kernels and the backend dispatcher (see dispatch.py)."""

from .dispatch import BACKENDS, attention, check_backend_available, resolve_backend
from .mask import AttentionMask, dense_mask
from .reference import attention_reference

__all__ = [
    "BACKENDS",
    "AttentionMask",
    "attention",
    "attention_reference",
    "check_backend_available",
    "dense_mask",
    "resolve_backend",
]
