"""The data cursor survives a resume on a different number of data-parallel ranks.

Token values equal their positions (tokens = 0, 1, 2, ...), so a window's first token divided
by seq_len is the sample index it came from. A run draws global batches on ``dp_before``
ranks, saves the loader state through JSON as a checkpoint does, and continues on
``dp_after`` ranks, each with a fresh loader: the samples, read back from the token values,
must be the uninterrupted single-rank stream, every sample exactly once per epoch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from triforge.trainer.data import GlobalSampler, TokenSplit, WindowLoader

SEQ = 4
SAMPLES = 37  # not a multiple of the batch: epochs end inside a global batch
BATCH = 8
STEPS = 12  # 96 samples: two full epochs and part of a third
SEED = 7


def new_loader() -> WindowLoader:
    tokens = np.arange(SAMPLES * SEQ + 1, dtype=np.uint32)  # token value = position
    split = TokenSplit(tokens=tokens, doc_offsets=np.array([0]))
    assert WindowLoader.num_samples(split, SEQ) == SAMPLES
    return WindowLoader(split, SEQ, GlobalSampler(SAMPLES, seed=SEED))


def global_batch(loaders: list[WindowLoader]) -> list[int]:
    """One step on len(loaders) ranks: the sample of every window, rank 0's slice first."""
    samples = []
    for rank, loader in enumerate(loaders):
        windows = loader.next_batch(BATCH, dp_rank=rank, dp_size=len(loaders))
        starts = windows.tokens[:, 0]
        # a window is seq_len + 1 consecutive positions, labelled with its own sample id
        assert (windows.tokens == starts[:, None] + torch.arange(SEQ + 1)).all()
        assert (windows.sample_ids * SEQ == starts).all()
        samples += (starts // SEQ).tolist()
    return samples


def run(dp_before: int, dp_after: int, resume_at: int) -> list[int]:
    """Samples of STEPS global batches, resumed after ``resume_at`` steps on other ranks."""
    loaders = [new_loader() for _ in range(dp_before)]
    samples = [s for _ in range(resume_at) for s in global_batch(loaders)]
    state = json.loads(json.dumps(loaders[0].state_dict()))  # rank 0's state is the one saved
    assert all(loader.state_dict() == state for loader in loaders)
    loaders = [new_loader() for _ in range(dp_after)]
    for loader in loaders:
        loader.load_state_dict(state)
    return samples + [s for _ in range(STEPS - resume_at) for s in global_batch(loaders)]


@pytest.mark.parametrize(("dp_before", "dp_after"), [(2, 1), (1, 4), (2, 4), (4, 2)])
@pytest.mark.parametrize("resume_at", [4, 5, 9])
def test_resume_on_other_dp_sees_every_sample_once(dp_before, dp_after, resume_at):
    """resume_at 4: the next batch crosses into epoch 1; 5: the last saved batch did;
    9: resumed in epoch 1, the next batch crosses into epoch 2."""
    samples = run(dp_before, dp_after, resume_at)
    uninterrupted = run(1, 1, STEPS)
    assert samples == uninterrupted
    epochs = [samples[i : i + SAMPLES] for i in range(0, len(samples), SAMPLES)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(SAMPLES))
    assert len(set(epochs[2])) == len(epochs[2]) == STEPS * BATCH - 2 * SAMPLES
    assert epochs[0] != epochs[1] and epochs[0] != list(range(SAMPLES))  # shuffled per epoch
