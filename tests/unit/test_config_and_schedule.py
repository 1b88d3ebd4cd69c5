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
    (["trainer.foo=1"], r"unknown key trainer.foo; trainer has: batch_size, "),
    (["+trainer.foo=1"], r"unknown key trainer.foo"),
    (["checkpoint.Every=3"], r"unknown key checkpoint.Every; did you mean checkpoint.every\?"),
    (["trainer.deterministic=2"], r"trainer.deterministic=2 must be true or false"),
    (["model=null"], r"model=null must be one preset name: deepseek_v3_like, gpt2_124m, .*tiny"),
    (["model=[tiny,small]"], r"model=\[tiny,small\] must be one preset name"),
    (["optim.lr=nan"], r"optim.lr\(nan\) must be a finite number"),
    (["precision.initial_scale=inf"], r"precision.initial_scale\(inf\) must be a finite"),
    (["objective.ul2_weights=[nan,1,1]"], r"ul2_weights\(\[nan, 1.0, 1.0\]\) must hold finite"),
    (["optim.eps=-1"], r"optim.eps\(-1.0\) must be > 0"),
    (["optim.weight_decay=-0.1"], r"optim.weight_decay\(-0.1\) must be >= 0"),
    (["model.init_std=-1"], r"model.init_std\(-1.0\) must be > 0"),
    (["model.ffn_multiple_of=0"], r"model.ffn_multiple_of\(0\) must be > 0"),
    (["model.rope_theta=0"], r"model.rope_theta\(0.0\) must be > 0"),
    (["seed=4294967296"], r"seed\(4294967296\) must be in \[0, 2\*\*32\)"),
    (["generate.temperature=-1"], r"generate.temperature\(-1.0\) and top_k\(50\) must be >= 0"),
    (["generate.prompt="], r"generate.prompt is empty"),
    (["logging.wandb.mode=sometimes"], r"logging.wandb.mode='sometimes'"),
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


@pytest.mark.parametrize("overrides, pattern", [
    (["parallel.pp_schedule=nope"], r"parallel.pp_schedule='nope' is not one of"),  # pp=1 too
    (["parallel.timeout_s=0"], r"parallel.timeout_s\(0\) must be > 0"),
    (["parallel.pp=2", "trainer.micro_batch_size=2", "parallel.pp_layers_per_stage=[5,-1]"],
     r"pp_layers_per_stage \[5, -1\] must have 2 entries, each >= 1"),
    (["parallel.pp=2", "trainer.batch_size=1"], r"needs at least 2 microbatches per step"),
    (["parallel.pp=2", "parallel.dp_shard=2", "trainer.batch_size=1"],
     r"trainer.batch_size\(1\) must be divisible by dp\(2\)"),  # was a ZeroDivisionError
])
def test_layout_values_are_checked_before_any_work(overrides, pattern):
    from triforge.launcher.env import ProcessEnv
    from triforge.launcher.train import resolve_layout

    job = load_config(["model=tiny", "model.n_layers=4", *overrides])
    world = 4 if "parallel.dp_shard=2" in overrides else 2
    with pytest.raises(ConfigError, match=pattern):
        resolve_layout(job, ProcessEnv(world_size=world))


@pytest.mark.parametrize("environ, pattern", [
    ({"RANK": "x", "WORLD_SIZE": "2"}, r"RANK='x' must be an integer"),
    ({"RANK": "", "WORLD_SIZE": "2"}, r"RANK='' must be an integer"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, r"WORLD_SIZE\(0\) must be >= 1"),
    ({"RANK": "5", "WORLD_SIZE": "2"}, r"RANK\(5\) must be < WORLD_SIZE\(2\)"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, r"RANK\(-1\) must be >= 0"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2"}, r"LOCAL_RANK\(2\) must be <"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "http"}, r"MASTER_PORT='http'"),
    ({"SLURM_PROCID": "a", "SLURM_NTASKS": "2"}, r"SLURM_PROCID='a' must be an integer"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "[bad"},
     r"SLURM_NODELIST='\[bad' is not a node list"),
])
def test_a_malformed_launcher_environment_is_one_error(environ, pattern):
    from triforge.launcher.env import EnvError

    with pytest.raises(EnvError, match=pattern) as err:
        read_env(environ)
    assert "\n" not in str(err.value)


def test_wsd_warms_up_holds_then_decays_linearly_over_its_last_steps():
    cfg = OptimConfig(lr=1.0, warmup_steps=9, min_lr_ratio=0.1, schedule="wsd", decay_steps=20)
    lrs = [lr_at(s, cfg, max_steps=100) for s in range(100)]
    assert lrs[:9] == pytest.approx([(s + 1) / 10 for s in range(9)])  # warmup
    assert set(lrs[9:80]) == {1.0}  # stable: the rate a continued run can branch off from
    assert lrs[80:] == pytest.approx([1.0 - 0.9 * i / 20 for i in range(20)])
    assert lr_at(100, cfg, max_steps=100) == pytest.approx(0.1)  # the floor after the end
    with pytest.raises(ValueError, match=r"optim.decay_steps\(0\) .* > 0 with optim.schedule=wsd"):
        OptimConfig(schedule="wsd").validate()
