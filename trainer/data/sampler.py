"""The global sample order and each data-parallel rank's slice of it.

Sample i of the stream is a window of ``seq_len + 1`` tokens. The order is a permutation per
epoch drawn from (seed, epoch) alone, and the state is one integer, the global sample
position. Because nothing depends on the number of ranks, a job resumed on a different
data-parallel layout continues the same stream and sees every sample exactly once.

Large corpora never materialize the permutation (at 10**9 samples, a 4T-token corpus at seq
4096, an int64 permutation would take 8 GB per rank): above ``MATERIALIZED_MAX`` samples,
position p of an epoch maps to sample ``FeistelPermutation(n, key)(p)``, a keyed 6-round
Feistel network on the smallest even number of bits covering n, with cycle walking
(re-encrypting until the value falls below n) so that it is a bijection of [0, n); memory
is O(1) and a batch costs O(batch). Up to that size (a permutation of at most 128 MB) the
order is numpy's permutation from (seed, epoch), the order earlier versions used, so their
runs and checkpoints continue the same stream.
"""

from __future__ import annotations

import numpy as np

from triforge.errors import DataError

MATERIALIZED_MAX = 2**24  # samples: a permutation of up to 128 MB is kept as a table
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A keyed pseudo-random bijection of [0, n), evaluated pointwise in O(1) memory."""

    ROUNDS = 6

    def __init__(self, n: int, key: int):
        bits = max(2, (n - 1).bit_length())
        self.n, self.half = n, np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        seeds = np.random.SeedSequence(key).generate_state(self.ROUNDS, dtype=np.uint64)
        self.round_keys = [np.uint64(k) for k in seeds]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for k in self.round_keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << self.half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        y = self._encrypt(positions.astype(np.uint64))
        outside = y >= self.n
        while outside.any():  # cycle walking: the walk stays within the cycle, so it ends
            y[outside] = self._encrypt(y[outside])
            outside = y >= self.n
        return y.astype(np.int64)


class GlobalSampler:
    def __init__(self, num_samples: int, *, seed: int, shuffle: bool = True):
        if num_samples <= 0:
            raise DataError("the dataset has fewer tokens than one training sequence")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.position = 0  # global samples consumed so far: the data cursor
        self._epoch_cache: tuple[int, object] | None = None

    def _order(self, epoch: int):
        """Position within the epoch -> sample, as a callable on int64 arrays."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            if self.num_samples <= MATERIALIZED_MAX:
                table = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
                order = table.__getitem__
            else:
                key = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
                order = FeistelPermutation(self.num_samples, key)
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def indices(self, start: int, count: int) -> np.ndarray:
        """Sample indices at global positions start .. start+count-1 (crossing epochs)."""
        positions = np.arange(start, start + count, dtype=np.int64)
        if not self.shuffle:
            return positions % self.num_samples
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(positions // self.num_samples):
            sel = positions // self.num_samples == epoch
            out[sel] = self._order(int(epoch))(positions[sel] % self.num_samples)
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
