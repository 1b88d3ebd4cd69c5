"""The sample order without a materialized permutation: a bijection of [0, n) for every n,
keyed by (seed, epoch) alone, in constant memory at 10**9 samples."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from triforge.trainer.data.sampler import MATERIALIZED_MAX, FeistelPermutation, GlobalSampler


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 100, 1000, 4097, 65_536, 100_003])
def test_every_position_maps_to_a_distinct_sample_exhaustively(n):
    for key in (0, 1, 2**63 + 5):
        image = FeistelPermutation(n, key)(np.arange(n))
        assert np.array_equal(np.sort(image), np.arange(n))
    if n >= 1000:  # and it shuffles: few fixed points, no long runs of the identity
        assert (image == np.arange(n)).mean() < 0.01


def test_at_a_billion_samples_sampled_positions_stay_distinct_and_in_range():
    n = 10**9
    perm = FeistelPermutation(n, key=1234)
    positions = np.random.default_rng(0).choice(n, size=2_000_000, replace=False)
    image = perm(positions)
    assert image.min() >= 0 and image.max() < n
    assert len(np.unique(image)) == len(positions)


def test_a_billion_sample_stream_costs_constant_memory():
    sampler = GlobalSampler(10**9, seed=7)
    tracemalloc.start()
    for _ in range(5):
        batch = sampler.next_batch(4096)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(set(batch.tolist())) == 4096
    print(f"peak memory drawing 4096-sample batches at 1e9 samples: {peak / 1e6:.2f} MB "
          f"(a materialized int64 permutation: {8 * 10**9 / 1e9:.0f} GB)")
    assert peak < 5e6


def test_the_order_depends_on_seed_and_epoch_only():
    a, b = GlobalSampler(1000, seed=1), GlobalSampler(1000, seed=1)
    assert np.array_equal(a.indices(0, 2000), b.indices(0, 2000))
    first, second = a.indices(0, 1000), a.indices(1000, 1000)
    assert not np.array_equal(first, second)  # each epoch its own order
    assert np.array_equal(np.sort(first), np.sort(second))
    assert not np.array_equal(GlobalSampler(1000, seed=2).indices(0, 1000), first)


def test_small_corpora_keep_the_earlier_order_and_large_ones_use_the_feistel_one():
    small = GlobalSampler(1000, seed=5)
    earlier = np.random.default_rng([5, 0]).permutation(1000)  # what earlier versions drew
    assert np.array_equal(small.indices(0, 1000), earlier)
    large = GlobalSampler(MATERIALIZED_MAX + 1, seed=5)
    key = int(np.random.SeedSequence([5, 0]).generate_state(1)[0])
    assert np.array_equal(large.indices(10, 50),
                          FeistelPermutation(MATERIALIZED_MAX + 1, key)(np.arange(10, 60)))
