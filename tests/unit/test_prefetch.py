"""Reading ahead changes nothing the trainer sees: the same batches, and a cursor that is
the handed-out batches' (a checkpoint taken with a fetch in flight resumes exactly)."""

from __future__ import annotations

import numpy as np

from triforge.trainer.data import GlobalSampler, TokenSplit, WindowLoader
from triforge.trainer.data.prefetch import Prefetcher


def loader() -> WindowLoader:
    split = TokenSplit(np.arange(41 * 4 + 1, dtype=np.uint32), np.zeros(1, dtype=np.int64))
    return WindowLoader(split, 4, GlobalSampler(41, seed=3))


def test_read_ahead_hands_out_the_same_batches_and_saves_the_consumed_cursor():
    plain, ahead = loader(), Prefetcher(loader())
    for _ in range(5):
        a = plain.next_batch(8, dp_rank=1, dp_size=2)
        b = ahead.next_batch(8, dp_rank=1, dp_size=2)
        assert a.tokens.equal(b.tokens) and a.sample_ids.equal(b.sample_ids)
        assert ahead.state_dict() == plain.state_dict()  # not the batch in flight
    resumed = Prefetcher(loader())
    resumed.next_batch(8)  # a fetch in flight from another position, then a resume
    resumed.load_state_dict(ahead.state_dict())
    for _ in range(3):
        assert resumed.next_batch(8, dp_rank=1, dp_size=2).tokens.equal(
            plain.next_batch(8, dp_rank=1, dp_size=2).tokens)


def test_read_ahead_leaves_no_thread_that_exit_would_wait_for():
    """A multi-process run ends in launcher.dist.exit_process, which joins every non-daemon
    thread: a pool worker idling on its queue made finished runs hang there."""
    import threading

    before = set(threading.enumerate())  # other tests' threads (e.g. inductor's pool)
    ahead = Prefetcher(loader())
    for _ in range(3):
        ahead.next_batch(8)
    waiting = [t for t in threading.enumerate()
               if t not in before and not t.daemon]
    assert not waiting, waiting
