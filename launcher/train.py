"""``triforge-train [hydra overrides]``: the training entry point.

Works the same as a single process, under torchrun and under SLURM; the launcher reads the
environment once and hands every component its own config slice.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from triforge.errors import ConfigError, TriforgeError
from triforge.parallel import ParallelDims
from triforge.parallel.context import ParallelContext
from triforge.parallel.context_parallel import check_context_parallel
from triforge.parallel.mesh import build_meshes
from triforge.trainer.generate import sample_text
from triforge.trainer.plot import plot_runs
from triforge.trainer.trainer import Preempted

from .build import build_trainer, pick_device
from .config import JobConfig, load_config, to_yaml
from .deepspeed_check import check_deepspeed
from .dist import init_distributed, leave_distributed
from .env import ProcessEnv, read_env
from .signals import EXIT_PREEMPTED, SignalWatch


def resolve_layout(job: JobConfig, env: ProcessEnv) -> ParallelDims:
    """Validate the parallel degrees against the world size, the model and the batch, before
    any work (the rules live with the dims: parallel/dims.py)."""
    if job.debug.aux_l2_layer >= job.model.n_layers:
        raise ConfigError(f"config: debug.aux_l2_layer({job.debug.aux_l2_layer}) must be < "
                          f"model.n_layers({job.model.n_layers}), or -1 for off")
    if job.debug.inject_nonfinite_into == "overflow" and job.precision.dtype != "fp16":
        raise ConfigError("config: debug.inject_nonfinite_into=overflow needs precision=fp16 "
                          "(only fp16 gradients overflow)")
    p, t = job.parallel, job.trainer
    check_compile(job)
    check_fused_norm(job)
    check_deepspeed(job)
    try:
        check_context_parallel(cp=p.cp, comm=p.cp_comm, seq_len=t.seq_len,
                               backend=job.attention.backend, compile=t.compile,
                               num_experts=job.model.moe.num_experts)
        dims = ParallelDims.from_config(p, env.world_size)
        dims.validate_model(n_heads=job.model.n_heads, n_kv_heads=job.model.kv_heads,
                            n_layers=job.model.n_layers, num_experts=job.model.moe.num_experts)
        dims.validate_batch(batch_size=t.batch_size, micro_batch_size=t.micro_batch_size,
                            pp_microbatches=p.microbatches)
        if dims.pp > 1:
            dims.validate_pipeline(p, n_layers=job.model.n_layers,
                                   microbatches=p.microbatches or t.microbatches(dims.dp))
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    return dims


def check_compile(job: JobConfig) -> None:
    """What ``trainer.compile`` covers so far: dense blocks under data, tensor and pipeline
    parallelism. MoE layers route with data-dependent shapes, which ``fullgraph``
    compilation refuses."""
    if not job.trainer.compile:
        return
    if job.model.moe.num_experts:
        raise ConfigError("config: trainer.compile=true covers dense models; mixture-of-experts "
                          "layers need trainer.compile=false")


def check_fused_norm(job: JobConfig) -> None:
    """A fused ``model.norm_impl`` under ``trainer.compile`` is untested (its kernels are
    opaque to the compiler), so it is refused rather than left to fail or graph-break."""
    impl = job.model.norm_impl
    if impl != "torch" and job.trainer.compile:
        raise ConfigError(f"config: model.norm_impl={impl} is not covered by trainer.compile "
                          "yet; use model.norm_impl=torch with trainer.compile=true")


def check_run_dir(run_dir: str) -> Path:
    """``run.dir`` as a path, if it is one triforge may write into: new, empty, or a run
    (metrics.jsonl, checkpoints/, a config.yaml of ours, or the slurm/ folder triforge-submit
    writes before the job starts). Anything else would have its config.yaml and loss.png
    silently replaced."""
    if not run_dir.strip():
        raise ConfigError("config: run.dir is empty; name a directory for the run's files, "
                          "e.g. run.dir=runs/my-run")
    path = Path(run_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"config: run.dir={run_dir} is a file; choose a directory")
    if path.is_dir() and any(path.iterdir()) and not _is_run(path):
        raise ConfigError(f"config: run.dir={run_dir} holds other files and is not a triforge "
                          "run (no metrics.jsonl, checkpoints/ or config.yaml of ours); choose "
                          "a new or empty directory")
    return path


def _is_run(path: Path) -> bool:
    if (path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir():
        return True
    if (path / "slurm" / "job.sbatch").is_file():  # submitted by triforge-submit, not yet run
        return True
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and {"run", "trainer", "model"} <= config.keys()


def train(job: JobConfig, *, log=print, env: ProcessEnv | None = None):
    """Run (or resume) the job described by ``job``; returns the finished Trainer."""
    env = read_env() if env is None else env
    run_dir = check_run_dir(job.run.dir)
    dims = resolve_layout(job, env)
    device = pick_device(job.trainer.device, env)
    if job.attention.backend == "triton" and device.type != "cuda" and not env.triton_interpret:
        raise ConfigError("config: attention.backend=triton needs a CUDA device (or "
                          "TRITON_INTERPRET=1 to run the kernels slowly on the CPU); use "
                          "attention.backend=sdpa on the CPU")
    if job.trainer.deterministic:
        torch.use_deterministic_algorithms(True)
    init_distributed(env, device, timeout_s=job.parallel.timeout_s)
    meshes = build_meshes(dims, device.type) if env.world_size > 1 else None
    ctx = ParallelContext(dims, meshes, env.rank)
    log = log if ctx.is_main else (lambda *_: None)
    trainer, tokenizer = build_trainer(job, env, ctx, device, log=log)
    trainer.watch = watch = SignalWatch().install()
    trainer.checkpointer.check_writable()
    resume_from = trainer.checkpointer.find_resume()
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(job))
    if resume_from is not None:
        trainer.resume(resume_from)
        log(f"resumed from {resume_from} at step {trainer.state.step}")
    elif job.checkpoint.init_from:  # a continued run's start; its own checkpoints win later
        start = Path(job.checkpoint.init_from).expanduser()
        trainer.start_from(start, optimizer=job.checkpoint.load == "weights+optimizer")
        log(f"started from {start} (checkpoint.load={job.checkpoint.load}): step 0, with "
            "this run's schedule and data")
    if trainer.state.step >= (job.trainer.stop_at_step or job.trainer.max_steps):
        log(f"{run_dir} is already at step {trainer.state.step}; raise trainer.max_steps "
            "or choose a new run.dir to train further")
    try:
        trainer.fit()
        trainer.checkpointer.wait()
        saved = trainer.checkpointer.complete_steps()
        if job.checkpoint.save_at_end and saved[-1:] != [trainer.state.step]:
            trainer.save()
            trainer.checkpointer.wait()
    finally:
        watch.restore()
        for sink in trainer.sinks:
            sink.close()
    if ctx.is_main:
        finish(job, trainer, tokenizer, log=log, sample=env.world_size == 1)
    return trainer


def finish(job: JobConfig, trainer, tokenizer, *, log, sample: bool) -> None:
    """The loss plot and, on request, a sample of generated text."""
    run_dir = Path(job.run.dir)
    if job.logging.plot:
        plot_runs([run_dir], run_dir / "loss.png")
        log(f"metrics: {run_dir / 'metrics.jsonl'}  plot: {run_dir / 'loss.png'}")
    else:
        log(f"metrics: {run_dir / 'metrics.jsonl'}")
    if job.trainer.sample_at_end and sample:
        text = sample_text(trainer.model, tokenizer, job.generate, device=trainer.device,
                           max_context=job.trainer.seq_len, seed=job.seed)
        log("sample:\n" + text)
    elif job.trainer.sample_at_end:
        log(f"sample with: triforge-generate run.dir={run_dir}")


def main(argv: list[str] | None = None) -> int:
    """The exit status: 0 done, 2 bad input (one line on stderr), 75 preempted (requeue).
    A process that joined a process group does not return: see ``leave_distributed``."""
    args = sys.argv[1:] if argv is None else argv
    code = 1
    try:
        job = load_config(args)
        train(job)
        code = 0
    except TriforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except Preempted:
        code = EXIT_PREEMPTED
    except Exception:
        if not dist.is_initialized():
            raise
        traceback.print_exc()  # a bug: report it before the process ends below
    # 0 and 75 are decisions every rank took together; 2 and 1 may be one rank's alone.
    return leave_distributed(code, all_ranks_done=code in (0, EXIT_PREEMPTED))


if __name__ == "__main__":
    sys.exit(main())
