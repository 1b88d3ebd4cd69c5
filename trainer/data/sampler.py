"""The global sample order and each data-parallel rank's slice of it.

Sample i of the stream is a window of ``seq_len + 1`` tokens. The order is a permutation per
epoch drawn from (seed, epoch) alone, and the state is one integer, the global sample
position. Because nothing depends on the number of ranks, a job resumed on a different
data-parallel layout continues the same stream and sees every sample exactly once.
"""

from __future__ import annotations

import numpy as np

from triforge.errors import DataError


class GlobalSampler:
    def __init__(self, num_samples: int, *, seed: int, shuffle: bool = True):
        if num_samples <= 0:
            raise DataError("the dataset has fewer tokens than one training sequence")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.position = 0  # global samples consumed so far: the data cursor
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            else:
                order = np.arange(self.num_samples)
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def indices(self, start: int, count: int) -> np.ndarray:
        """Sample indices at global positions start .. start+count-1 (crossing epochs)."""
        positions = np.arange(start, start + count)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(positions // self.num_samples):
            sel = positions // self.num_samples == epoch
            out[sel] = self._order(int(epoch))[positions[sel] % self.num_samples]
        return out

    def next_batch(self, global_batch: int, *, dp_rank: int = 0, dp_size: int = 1) -> np.ndarray:
        """This rank's sample indices of the next global batch; advances the cursor."""
        if global_batch % dp_size:
            raise ValueError(f"global batch({global_batch}) must be divisible by dp({dp_size})")
        per_rank = global_batch // dp_size
        mine = self.indices(self.position + dp_rank * per_rank, per_rank)
        self.position += global_batch
        return mine

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            raise DataError(
                f"the checkpoint's data stream (seed {state['seed']}, {state['num_samples']} "
                f"samples) differs from this run's (seed {self.seed}, {self.num_samples}); "
                "resume with the same dataset, seed and trainer.seq_len"
            )
        self.position = int(state["position"])
