"""``triforge-train [hydra overrides]``: the training entry point.

Works the same as a single process, under torchrun and under SLURM; the launcher reads the
environment once and hands every component its own config slice.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from triforge.errors import ConfigError, TriforgeError
from triforge.parallel import ParallelDims
from triforge.trainer.generate import sample_text
from triforge.trainer.plot import plot_runs

from .build import build_trainer
from .config import JobConfig, load_config, to_yaml
from .env import read_env


def train(job: JobConfig, *, log=print):
    """Run (or resume) the job described by ``job``; returns the finished Trainer."""
    env = read_env()
    if env.world_size > 1:
        raise ConfigError(
            f"WORLD_SIZE={env.world_size}: multi-process training is not available in this "
            "version; run a single process"
        )
    try:
        dims = ParallelDims.from_config(job.parallel, env.world_size)
        dims.validate_model(n_heads=job.model.n_heads, n_kv_heads=job.model.kv_heads,
                            n_layers=job.model.n_layers)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    if job.trainer.deterministic:
        torch.use_deterministic_algorithms(True)
    run_dir = Path(job.run.dir)
    trainer, tokenizer = build_trainer(job, env, dims, log=log)
    resume_from = trainer.checkpointer.find_resume()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(job))
    if resume_from is not None:
        trainer.resume(resume_from)
        log(f"resumed from {resume_from} at step {trainer.state.step}")
    if trainer.state.step >= (job.trainer.stop_at_step or job.trainer.max_steps):
        log(f"{run_dir} is already at step {trainer.state.step}; raise trainer.max_steps "
            "or choose a new run.dir to train further")
    try:
        trainer.fit()
        saved = trainer.checkpointer.complete_steps()
        if job.checkpoint.save_at_end and saved[-1:] != [trainer.state.step]:
            trainer.save()
    finally:
        for sink in trainer.sinks:
            sink.close()
    finish(job, trainer, tokenizer, log=log)
    return trainer


def finish(job: JobConfig, trainer, tokenizer, *, log) -> None:
    """The loss plot and, on request, a sample of generated text."""
    run_dir = Path(job.run.dir)
    plot_runs([run_dir], run_dir / "loss.png")
    log(f"metrics: {run_dir / 'metrics.jsonl'}  plot: {run_dir / 'loss.png'}")
    if job.trainer.sample_at_end:
        text = sample_text(trainer.model, tokenizer, job.generate, device=trainer.device,
                           max_context=job.trainer.seq_len, seed=job.seed)
        log("sample:\n" + text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        job = load_config(args)
        train(job)
    except TriforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
