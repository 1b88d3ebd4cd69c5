"""Everything that knows about meshes: degrees, tensor/data/pipeline/expert parallelism."""

from .dims import ParallelConfig, ParallelDims

__all__ = ["ParallelConfig", "ParallelDims"]
