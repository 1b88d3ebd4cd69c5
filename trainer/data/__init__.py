"""Data pipeline: corpus -> tokenizer -> shards -> global sampler -> per-rank windows."""

from .build import build_dataset, cached_dataset_dir, open_dataset
from .config import DataConfig
from .loader import WindowLoader
from .sampler import GlobalSampler
from .shards import Dataset, TokenSplit
from .tokenizer import BPETokenizer, ByteTokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "DataConfig",
    "Dataset",
    "GlobalSampler",
    "TokenSplit",
    "WindowLoader",
    "build_dataset",
    "cached_dataset_dir",
    "open_dataset",
]
