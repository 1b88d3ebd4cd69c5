import json

from triforge.launcher.layout import main, rank_groups
from triforge.parallel import ParallelConfig, ParallelDims


def test_rank_groups_pp_outermost_tp_innermost():
    dims = ParallelDims.from_config(ParallelConfig(tp=2, pp=2), world_size=8)
    groups = rank_groups(dims)
    assert groups["tp"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert groups["pp"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert groups["dp_shard"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert groups["dp"] == groups["dp_shard"]
    assert groups["dp_replicate"] == [[i] for i in range(8)]


def test_hsdp_dp_groups_flatten_replicate_and_shard():
    dims = ParallelDims.from_config(ParallelConfig(dp_replicate=2, dp_shard=2), world_size=4)
    groups = rank_groups(dims)
    assert groups["dp_replicate"] == [[0, 2], [1, 3]]
    assert groups["dp_shard"] == [[0, 1], [2, 3]]
    assert groups["dp"] == [[0, 1, 2, 3]]


def test_cli_prints_json_and_explains_bad_arithmetic(capsys):
    assert main(["world_size=4", "parallel.tp=2"]) == 0
    assert json.loads(capsys.readouterr().out)["tp"] == [[0, 1], [2, 3]]
    assert main(["world_size=4", "parallel.tp=2", "parallel.dp_shard=4"]) == 2
    assert "= 8 != WORLD_SIZE(4)" in capsys.readouterr().err
