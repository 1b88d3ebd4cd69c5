"""Weighted blends: the realized mixture, independence of the layout, exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from triforge.errors import DataError
from triforge.trainer.data.blend import (
    SOURCE_ID_SHIFT,
    BlendLoader,
    BlendSource,
    assign_sources,
    source_sampler,
)
from triforge.trainer.data.loader import WindowLoader
from triforge.trainer.data.shards import TokenSplit

SEQ = 4


def blend(sizes=(40, 25, 10), weights=(0.6, 0.3, 0.1), seed=7) -> BlendLoader:
    sources = []
    for i, n in enumerate(sizes):
        split = TokenSplit(np.arange(n * SEQ + 1, dtype=np.uint32) + 1000 * i,
                           np.zeros(1, dtype=np.int64))
        sampler = source_sampler(WindowLoader.num_samples(split, SEQ), seed=seed, source=i)
        sources.append(BlendSource(f"s{i}", WindowLoader(split, SEQ, sampler)))
    return BlendLoader(sources, list(weights))


def drawn(loader: BlendLoader, batches: int, batch: int, dp: int) -> list[int]:
    """Sample ids of ``batches`` global batches, the ranks' shares concatenated in order."""
    out = []
    for _ in range(batches):
        state = loader.state_dict()
        for rank in range(dp):
            loader.load_state_dict(state)  # every rank starts the batch from the same cursor
            out += loader.next_batch(batch, dp_rank=rank, dp_size=dp).sample_ids.tolist()
    return out


def test_every_prefix_of_the_stream_matches_the_weights_to_within_one_sample():
    rng = np.random.default_rng(0)
    for _ in range(5):
        weights = rng.dirichlet(np.ones(4))
        taken = np.zeros(4, dtype=np.int64)
        sources = assign_sources(weights, taken, 0, 3000)
        counts = np.cumsum(np.eye(4, dtype=np.int64)[sources], axis=0)  # after each position
        n = np.arange(1, 3001)[:, None]
        assert np.abs(counts - weights * n).max() < 1.0


def test_the_stream_does_not_depend_on_the_data_parallel_layout():
    one = drawn(blend(), 6, 8, dp=1)
    assert drawn(blend(), 6, 8, dp=2) == one
    assert drawn(blend(), 6, 8, dp=4) == one
    sources = [i >> SOURCE_ID_SHIFT for i in one]
    assert sources.count(0) == 29 and sources.count(1) == 14 and sources.count(2) == 5


def test_a_resume_into_another_layout_sees_each_sample_of_a_source_once_per_epoch():
    reference = drawn(blend(), 10, 8, dp=1)  # 80 samples: 48 / 24 / 8; no source wraps
    first = blend()
    head = drawn(first, 4, 8, dp=1)
    resumed = blend()
    resumed.load_state_dict(first.state_dict())
    assert head + drawn(resumed, 6, 8, dp=2) == reference
    for source, size in enumerate((40, 25, 10)):
        mine = [i - (source << SOURCE_ID_SHIFT) for i in reference
                if i >> SOURCE_ID_SHIFT == source]
        assert len(set(mine[:size])) == len(mine[:size])  # no repeat within an epoch


def test_a_checkpoint_of_another_blend_is_refused():
    saved = blend().state_dict()
    with pytest.raises(DataError, match="blend weights .* differ"):
        blend(weights=(0.5, 0.3, 0.2)).load_state_dict(saved)
    with pytest.raises(DataError, match="num_samples"):
        blend(sizes=(40, 25, 11)).load_state_dict(saved)
