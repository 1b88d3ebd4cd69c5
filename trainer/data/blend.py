"""Weighted blends of several datasets: one global sample stream that interleaves sources.

Position g of the blended stream (0, 1, 2, ...) goes to the source furthest behind its
share: the one with the largest ``weight_i * (g + 1) - taken_i``, ties to the lowest index
(the greedy, error-minimizing assignment of Megatron's blending index). The sequence
depends only on the normalized weights, and after any n positions every source has had
``weight_i * n`` samples to within one. Within a source, its k-th sample is position k of
that source's own ``GlobalSampler`` (a permutation per epoch from (seed, source, epoch)).

The state is the global position and each source's count of samples taken (its cursor);
neither depends on the number of data-parallel ranks. A global batch is the next B positions
and rank r takes its contiguous B / dp of them, as with one source, so after a resume into
another layout every source still sees each of its samples exactly once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from triforge.errors import DataError

from .loader import TokenWindows, WindowLoader
from .sampler import GlobalSampler

# Sample ids seed objectives' noise: a blended sample's id carries its source in the high
# bits, so ids stay distinct across sources (a single source keeps its plain ids).
SOURCE_ID_SHIFT = 40


def assign_sources(weights: np.ndarray, taken: np.ndarray, start: int, count: int
                   ) -> np.ndarray:
    """The source of positions ``start .. start + count - 1``, given the samples ``taken``
    from each source before ``start`` (updated in place)."""
    out = np.empty(count, dtype=np.int64)
    for j in range(count):
        behind = weights * (start + j + 1) - taken
        source = int(np.argmax(behind))  # the first of equal maxima
        out[j] = source
        taken[source] += 1
    return out


@dataclass
class BlendSource:
    name: str
    loader: WindowLoader  # the source's split, with its own sampler


class BlendLoader:
    """The ``WindowLoader`` interface (``next_batch``, cursor state) over a blend."""

    def __init__(self, sources: list[BlendSource], weights: list[float]):
        total = float(sum(weights))
        if not sources or total <= 0 or any(w <= 0 for w in weights):
            raise DataError("data.blend needs sources with weights > 0")
        self.sources = sources
        self.weights = np.asarray(weights, dtype=np.float64) / total
        self.position = 0
        self.taken = np.zeros(len(sources), dtype=np.int64)

    def next_batch(self, global_batch: int, *, dp_rank: int = 0, dp_size: int = 1
                   ) -> TokenWindows:
        """This rank's windows of the next global batch; advances every cursor."""
        per_rank = global_batch // dp_size
        before = self.taken.copy()
        sources = assign_sources(self.weights, self.taken, self.position, global_batch)
        # each position's rank within its source: the source's sample cursor at it
        within = np.empty(global_batch, dtype=np.int64)
        for i in range(len(self.sources)):
            mask = sources == i
            within[mask] = before[i] + np.arange(int(mask.sum()))
        self.position += global_batch
        lo = dp_rank * per_rank
        return self.batch(sources[lo:lo + per_rank], within[lo:lo + per_rank])

    def batch(self, sources: np.ndarray, within: np.ndarray) -> TokenWindows:
        rows, docs, ids = [], [], []
        for source, k in zip(sources.tolist(), within.tolist(), strict=True):
            loader = self.sources[source].loader
            index = loader.sampler.indices(k, 1)
            one = loader.batch(index)
            rows.append(one.tokens)
            docs.append(one.doc_ids)
            ids.append((source << SOURCE_ID_SHIFT) + int(index[0]))
        doc_ids = torch.cat(docs) if docs and docs[0] is not None else None
        return TokenWindows(torch.cat(rows), doc_ids, torch.tensor(ids, dtype=torch.int64))

    def state_dict(self) -> dict:
        return {"position": self.position, "taken": self.taken.tolist(),
                "sources": [s.name for s in self.sources],
                "weights": self.weights.tolist(),
                "num_samples": [s.loader.sampler.num_samples for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("sources", "num_samples"):
            if state.get(key) != mine[key]:
                raise DataError(f"the checkpoint's blend ({key} {state.get(key)}) differs from "
                                f"this run's ({mine[key]}); resume with the same data.blend")
        if not np.allclose(state["weights"], mine["weights"], rtol=0, atol=1e-12):
            raise DataError(f"the checkpoint's blend weights {state['weights']} differ from "
                            f"this run's {mine['weights']}; resume with the same data.blend")
        self.position = int(state["position"])
        self.taken = np.asarray(state["taken"], dtype=np.int64)


def source_sampler(num_samples: int, *, seed: int, source: int) -> GlobalSampler:
    """A source's own sample order: its permutations drawn from (seed, source, epoch)."""
    return GlobalSampler(num_samples, seed=seed * 1_000_003 + source)
