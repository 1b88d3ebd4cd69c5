"""Plain single-device PyTorch models; parallelism is applied from outside (parallel/)."""

from .config import ModelConfig
from .transformer import Block, Transformer, build_model, materialize

__all__ = ["Block", "ModelConfig", "Transformer", "build_model", "materialize"]
