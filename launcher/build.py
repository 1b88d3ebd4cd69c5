"""Build every component of a job from its validated config, each from its own slice."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch

from triforge.errors import ConfigError
from triforge.models import build_model, materialize
from triforge.parallel import ParallelDims
from triforge.trainer.checkpoint import Checkpointer
from triforge.trainer.data import GlobalSampler, WindowLoader, open_dataset
from triforge.trainer.evaluate import Evaluator
from triforge.trainer.flops import device_peak_flops, flops_per_token
from triforge.trainer.loggers import ConsoleSink, JsonlSink, WandbSink
from triforge.trainer.objectives import build_objective
from triforge.trainer.optim import build_optimizer
from triforge.trainer.throughput import Throughput
from triforge.trainer.trainer import Trainer

from .config import JobConfig, to_yaml
from .env import ProcessEnv


def pick_device(requested: str, env: ProcessEnv) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_batch(job: JobConfig, dims: ParallelDims) -> None:
    t = job.trainer
    if t.batch_size % dims.dp:
        raise ConfigError(f"config: trainer.batch_size({t.batch_size}) must be divisible by dp({dims.dp})")
    per_rank = t.batch_size // dims.dp
    if t.micro_batch_size and per_rank % t.micro_batch_size:
        raise ConfigError(
            f"config: trainer.batch_size({t.batch_size}) / dp({dims.dp}) = {per_rank} must be "
            f"divisible by trainer.micro_batch_size({t.micro_batch_size})"
        )


def build_loaders(job: JobConfig, *, log):
    """(dataset, train loader, validation loader or None)."""
    dataset = open_dataset(job.data, build_if_missing=True, log=log)
    seq = job.trainer.seq_len
    train = dataset.split("train")
    sampler = GlobalSampler(WindowLoader.num_samples(train, seq), seed=job.seed)
    loader = WindowLoader(train, seq, sampler)
    val = dataset.split("val")
    n_val = WindowLoader.num_samples(val, seq)
    val_loader = WindowLoader(val, seq, GlobalSampler(n_val, seed=job.seed, shuffle=False)) if n_val else None
    return dataset, loader, val_loader


def build_sinks(job: JobConfig, env: ProcessEnv, run_dir: Path) -> list:
    sinks: list = [JsonlSink(run_dir / "metrics.jsonl")]
    if env.rank != 0:
        return sinks
    sinks.append(ConsoleSink(job.trainer.max_steps, 0, progress_bar=job.logging.progress_bar))
    wb = job.logging.wandb
    if wb.enabled:
        mode = wb.mode if wb.mode != "auto" else ("online" if env.wandb_api_key_set else "offline")
        config = dataclasses.asdict(job)
        sinks.append(WandbSink(wb, run_dir=run_dir, config=config, mode=mode, name=run_dir.name))
    return sinks


def build_trainer(job: JobConfig, env: ProcessEnv, dims: ParallelDims, *, log) -> tuple:
    """Everything ``Trainer.fit`` needs; returns (trainer, tokenizer)."""
    device = pick_device(job.trainer.device, env)
    check_batch(job, dims)
    seed_everything(job.seed)
    dataset, loader, val_loader = build_loaders(job, log=log)
    vocab = job.model.padded_vocab(dataset.tokenizer.vocab_size)
    model = build_model(job.model, vocab_size=vocab, attention_backend=job.attention.backend)
    model = materialize(model, device, seed=job.seed)
    n_params = sum(p.numel() for p in model.parameters())
    non_emb = job.model.num_params(vocab, embedding=False)
    peak, peak_src = device_peak_flops(device, job.logging.peak_flops)
    log(f"model {job.model.name}: {n_params / 1e6:.2f}M parameters, vocab {vocab}, on {device}; "
        f"MFU against {peak / 1e12:.2f} TFLOP/s ({peak_src})")
    objective = build_objective("clm")
    run_dir = Path(job.run.dir)
    evaluator = None
    if val_loader is not None and job.trainer.eval_every:
        evaluator = Evaluator(val_loader, objective, batch_size=job.trainer.batch_size // dims.dp,
                              num_batches=job.trainer.eval_batches, every=job.trainer.eval_every)
    trainer = Trainer(
        cfg=job.trainer, optim_cfg=job.optim, model=model,
        optimizer=build_optimizer(model, job.optim), objective=objective, loader=loader,
        evaluator=evaluator, checkpointer=Checkpointer(run_dir, job.checkpoint, log=log),
        throughput=Throughput(
            flops_per_token=flops_per_token(non_emb, job.model.n_layers, job.model.d_model,
                                            job.trainer.seq_len),
            peak_flops=peak, num_devices=dims.world_size, device=device,
        ),
        sinks=build_sinks(job, env, run_dir), device=device, config_yaml=to_yaml(job),
    )
    return trainer, dataset.tokenizer
