"""Weighted blends: the realized mixture, independence of the layout, exact resume."""

from __future__ import annotations

import json

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


# As tests/unit/test_data_resume.py for one source: token values equal positions (offset by
# 10_000 per source), every rank has its own loader, the state goes through JSON, and the
# sources are small enough that their epochs end inside global batches.
SIZES, WEIGHTS, BATCH, STEPS = (13, 7), (0.7, 0.3), 8, 12


def positional_blend() -> BlendLoader:
    sources = []
    for i, n in enumerate(SIZES):
        split = TokenSplit(np.arange(n * SEQ + 1, dtype=np.uint32) + 10_000 * i,
                           np.zeros(1, dtype=np.int64))
        sources.append(BlendSource(f"s{i}", WindowLoader(split, SEQ, source_sampler(
            n, seed=3, source=i))))
    return BlendLoader(sources, list(WEIGHTS))


def step(loaders: list[BlendLoader]) -> list[tuple[int, int]]:
    """(source, sample) of every window of one global batch, rank 0's share first."""
    out = []
    for rank, loader in enumerate(loaders):
        starts = loader.next_batch(BATCH, dp_rank=rank, dp_size=len(loaders)).tokens[:, 0]
        out += [(int(t) // 10_000, int(t) % 10_000 // SEQ) for t in starts]
    return out


@pytest.mark.parametrize(("dp_before", "dp_after"), [(2, 1), (1, 4), (4, 2)])
@pytest.mark.parametrize("resume_at", [3, 7])
def test_blend_resumed_on_other_ranks_continues_the_one_rank_stream(dp_before, dp_after,
                                                                     resume_at):
    reference_loader = [positional_blend()]
    reference = [s for _ in range(STEPS) for s in step(reference_loader)]
    loaders = [positional_blend() for _ in range(dp_before)]
    got = [s for _ in range(resume_at) for s in step(loaders)]
    state = json.loads(json.dumps(loaders[0].state_dict()))
    assert all(loader.state_dict() == state for loader in loaders)
    loaders = [positional_blend() for _ in range(dp_after)]
    for loader in loaders:
        loader.load_state_dict(state)
    got += [s for _ in range(STEPS - resume_at) for s in step(loaders)]
    assert got == reference
    for source, size in enumerate(SIZES):  # each epoch of a source: all its samples once
        samples = [k for s, k in reference if s == source]
        whole = len(samples) // size * size
        assert whole >= 2 * size
        for e in range(0, whole, size):
            assert sorted(samples[e:e + size]) == list(range(size))
