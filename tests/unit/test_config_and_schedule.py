import math

import pytest

from triforge.errors import ConfigError
from triforge.launcher.config import load_config
from triforge.launcher.env import first_slurm_host, read_env
from triforge.parallel import ParallelConfig, ParallelDims
from triforge.trainer.config import OptimConfig
from triforge.trainer.optim import lr_at


def test_defaults_and_overrides_compose():
    job = load_config(["model=tiny", "trainer.max_steps=7", "optim.lr=3e-4"])
    assert job.model.name == "tiny" and job.trainer.max_steps == 7 and job.optim.lr == 3e-4
    assert job.trainer.seq_len == job.model.max_seq_len  # interpolated default
    assert load_config([]).model.name == "small"


@pytest.mark.parametrize("overrides,pattern", [
    (["trainer.foo=1"], r"Key 'foo' not in 'TrainerConfig'"),
    (["+trainer.foo=1"], r"Key 'foo' not in 'TrainerConfig'"),
    (["trainer.max_steps=abc"], r"'abc' .* could not be converted to Integer"),
    (["model=nope"], r"choose one of .*tiny"),
    (["trainer.batch_size=0"], r"trainer.batch_size\(0\) must be > 0"),
    (["model.n_heads=5"], r"model.n_heads\(5\) must divide model.d_model\(384\)"),
    (["trainer.seq_len=512"], r"trainer.seq_len\(512\) exceeds model.max_seq_len\(256\)"),
    (["precision=fp8"], r"precision/fp8'.*choose one of bf16, fp16, fp32"),
    (["precision.dtype=fp8"], r"precision.dtype='fp8'"),
    (["precision=fp16", "precision.hysteresis=0"], r"hysteresis\(0\) must be > 0"),
    (["trainer.nonfinite=ignore"], r"trainer.nonfinite='ignore' must be skip or halt"),
    (["debug.inject_nonfinite_into=param"], r"debug.inject_nonfinite_into='param'"),
    (["objective=foo"], r"objective/foo'.*choose one of clm, mlm, span, ul2"),
    (["objective=mlm", "objective.mask_prob=2"], r"objective.mask_prob\(2.0\) must be in"),
    (["attention.backend=magic"], r"attention.backend='magic'"),
    (["optim.schedule=step"], r"optim.schedule='step'"),
    (["data.tokenizer=wordpiece"], r"data.tokenizer='wordpiece'"),
    (["data.reset_positions=true"], r"needs data.document_masking=true"),
    (["trainer.stop_at_step=9", "trainer.max_steps=5"], r"stop_at_step\(9\) > max_steps\(5\)"),
])
def test_config_errors_are_one_line_and_name_the_rule(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config(overrides)
    assert "\n" not in str(err.value)


def test_lr_schedule_warmup_cosine_floor():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg, max_steps=110) for s in range(111)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # monotone decay
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1)
    assert lr_at(500, cfg, max_steps=110) == pytest.approx(0.1)  # beyond the schedule: floor


def test_parallel_dims_arithmetic():
    dims = ParallelDims.from_config(ParallelConfig(tp=2, pp=2), world_size=8)
    assert dims.dp_shard == 2 and dims.dp == 2
    with pytest.raises(ValueError, match=r"= 8 != WORLD_SIZE\(4\)"):
        ParallelDims.from_config(ParallelConfig(dp_shard=2, tp=2, pp=2), world_size=4)
    with pytest.raises(ValueError, match=r"tp\(4\) must divide n_heads\(6\)"):
        ParallelDims.from_config(ParallelConfig(tp=4), 4).validate_model(
            n_heads=6, n_kv_heads=6, n_layers=6)


def test_env_reads_torchrun_then_slurm_then_single():
    env = read_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1",
                    "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (3, 8, 1, "torchrun")
    env = read_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                    "SLURM_NODELIST": "gpu[07-09,12]"})
    assert (env.rank, env.world_size, env.master_addr, env.source) == (5, 16, "gpu07", "slurm")
    assert read_env({}).world_size == 1
    assert first_slurm_host("nodeA,nodeB") == "nodeA"
    assert first_slurm_host("x[1,3]") == "x1"


def test_layout_errors_state_the_arithmetic():
    from triforge.launcher.env import ProcessEnv
    from triforge.launcher.train import resolve_layout

    job = load_config(["model=tiny", "model.tie_embeddings=false", "parallel.pp=2",
                       "parallel.microbatches=3", "trainer.batch_size=8"])
    with pytest.raises(ConfigError, match=r"divisible by dp\(2\) \* parallel.microbatches\(3\) = 6"):
        resolve_layout(job, ProcessEnv(world_size=4))
    resolve_layout(load_config(["model=tiny", "parallel.tp=2"]), ProcessEnv(world_size=2))  # tied
    with pytest.raises(ConfigError, match=r"n_layers\(2\) must be >= pp\(2\) \* "
                                          r"pp_virtual_stages\(2\) = 4 stages"):
        resolve_layout(load_config(["model=tiny", "model.tie_embeddings=false", "parallel.pp=2",
                                    "parallel.pp_schedule=interleaved_1f1b",
                                    "parallel.pp_virtual_stages=2"]), ProcessEnv(world_size=2))
    with pytest.raises(ConfigError, match=r"parallel.pp\(2\) needs at least 2 microbatches "
                                          r"per step, got 1; set trainer.micro_batch_size"):
        resolve_layout(load_config(["model=tiny", "model.tie_embeddings=false", "parallel.pp=2"]),
                       ProcessEnv(world_size=2))
    with pytest.raises(ConfigError, match=r"\* tp\(2\) \* pp\(1\) = 8 != WORLD_SIZE\(4\)"):
        resolve_layout(load_config(["model=tiny", "model.tie_embeddings=false", "parallel.tp=2",
                                    "parallel.dp_shard=4"]), ProcessEnv(world_size=4))
