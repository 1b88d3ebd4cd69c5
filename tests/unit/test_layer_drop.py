"""Progressive layer dropping: the schedule, the draws, and what the blocks are told."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers.spawn import spawn_ranks
from triforge.models import ModelConfig, build_model, materialize
from triforge.parallel import ParallelDims
from triforge.parallel.context import ParallelContext
from triforge.parallel.mesh import build_meshes
from triforge.trainer.layer_drop import (
    LayerDrop,
    LayerDropConfig,
    LayerDropDivergence,
    check_agreement,
    decisions,
    keep_probability,
    theta_at,
)


def test_schedule_matches_the_closed_form():
    cfg = LayerDropConfig(enabled=True, theta=0.5, gamma=0.001)
    for t in (0, 1, 100, 5000):
        assert theta_at(t, cfg) == pytest.approx(0.5 * math.exp(-0.001 * t) + 0.5)
    assert theta_at(0, cfg) == 1.0  # the first step keeps every block
    assert [keep_probability(i, 4, 0.5) for i in range(4)] == [0.875, 0.75, 0.625, 0.5]


def test_keep_fraction_per_layer_matches_p_l():
    """gamma large: theta is theta_bar from the second step on; 4000 draws per layer must
    give p_l within 5 standard errors."""
    cfg = LayerDropConfig(enabled=True, theta=0.3, gamma=1e3)
    steps, n_layers = 4000, 6
    kept = np.array([decisions(11, s, n_layers, cfg) for s in range(2, steps + 2)])
    for layer in range(n_layers):
        p = keep_probability(layer, n_layers, 0.3)
        stderr = math.sqrt(p * (1 - p) / steps)
        assert abs(kept[:, layer].mean() - p) < 5 * stderr, (layer, kept[:, layer].mean(), p)


def test_decisions_depend_on_seed_step_and_layer_only():
    cfg = LayerDropConfig(enabled=True, theta=0.3, gamma=1.0)
    assert decisions(5, 9, 8, cfg) == decisions(5, 9, 8, cfg)
    assert decisions(5, 9, 8, cfg)[:4] != [] and any(
        decisions(5, s, 8, cfg) != decisions(6, s, 8, cfg) for s in range(2, 10))


def test_blocks_are_told_and_restored():
    cfg = ModelConfig(name="t", d_model=32, n_layers=4, n_heads=4, max_seq_len=16)
    model = materialize(build_model(cfg, vocab_size=64, attention_backend="sdpa"), "cpu",
                        seed=0)
    drop_cfg = LayerDropConfig(enabled=True, theta=0.2, gamma=2.0)
    drop = LayerDrop(drop_cfg, seed=1, n_layers=4, parts=[model], ctx=ParallelContext.single())
    step = next(s for s in range(2, 50) if not all(decisions(1, s, 4, drop_cfg)))
    drop.step_start(step)
    keep = decisions(1, step, 4, drop_cfg)
    theta = theta_at(step - 1, drop_cfg)
    for layer, controls in model.blocks_controls().items():
        assert controls.keep == keep[layer]
        expected = 1 / keep_probability(layer, 4, theta) if keep[layer] else 1.0
        assert controls.residual_scale == pytest.approx(expected)
    metrics = {}
    drop.at_log(step, metrics)
    assert metrics == {"layer_drop_theta": theta, "layers_kept": sum(keep)}
    drop.step_end(step)
    assert all(c.keep and c.residual_scale == 1.0 for c in model.blocks_controls().values())


def _diverge(rank: int, world: int) -> None:
    dims = ParallelDims(dp_shard=world, world_size=world)
    ctx = ParallelContext(dims, build_meshes(dims, "cpu"), rank)
    with pytest.raises(LayerDropDivergence, match="differ across ranks at step 3"):
        check_agreement([True, rank == 0], 3, ctx)
    check_agreement([True, False], 4, ctx)  # the same decisions pass


@pytest.mark.distributed
def test_a_rank_that_decides_differently_is_caught_not_hung():
    spawn_ranks(_diverge, 2)
