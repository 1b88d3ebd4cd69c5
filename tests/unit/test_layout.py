import json

import pytest

from triforge.launcher.layout import main
from triforge.parallel import ParallelConfig, ParallelDims


def test_rank_groups_pp_outermost_tp_innermost():
    dims = ParallelDims.from_config(ParallelConfig(tp=2, pp=2), world_size=8)
    groups = dims.rank_groups()
    assert groups["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert groups["pp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert groups["dp_shard"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert groups["dp"] == groups["dp_shard"]
    assert groups["dp_replicate"] == [[i] for i in range(8)]


def test_hsdp_dp_groups_flatten_replicate_and_shard():
    dims = ParallelDims.from_config(ParallelConfig(dp_replicate=2, dp_shard=2), world_size=4)
    groups = dims.rank_groups()
    assert groups["dp_replicate"] == [[0, 2], [1, 3]]
    assert groups["dp_shard"] == [[0, 1], [2, 3]]
    assert groups["dp"] == [[0, 1, 2, 3]]


def test_cli_prints_json_and_explains_bad_arithmetic(capsys):
    assert main(["world_size=4", "parallel.tp=2"]) == 0
    assert json.loads(capsys.readouterr().out)["tp"] == [[0, 1], [2, 3]]
    assert main(["world_size=4", "parallel.tp=2", "parallel.dp_shard=4"]) == 2
    assert "= 8 != WORLD_SIZE(4)" in capsys.readouterr().err


def test_expert_groups_span_tp_and_part_of_dp_shard():
    dims = ParallelDims.from_config(ParallelConfig(tp=2, ep=4), world_size=8)  # dp_shard 4
    groups = dims.rank_groups()
    assert groups["ep"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert groups["expert_fsdp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert groups["fsdp"] == groups["dp"] == groups["loss"] == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_context_parallel_ranks_shard_parameters_but_share_data():
    dims = ParallelDims.from_config(ParallelConfig(dp_shard=2, cp=2, tp=2), world_size=8)
    groups = dims.rank_groups()
    assert groups["cp"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert groups["dp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert groups["fsdp"] == groups["loss"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert dims.fsdp_enabled and not ParallelDims(tp=2, world_size=2).fsdp_enabled


def test_expert_degree_rule_shows_the_arithmetic():
    with pytest.raises(ValueError, match=r"parallel.ep\(2\) must be cp\(1\) \* tp\(4\) = 4 times"):
        ParallelDims.from_config(ParallelConfig(tp=4, ep=2), world_size=8)
    with pytest.raises(ValueError, match=r"divisor of dp_shard\(3\)"):
        ParallelDims.from_config(ParallelConfig(ep=2), world_size=3)
