"""Build every component of a job from its validated config, each from its own slice."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from triforge.errors import ConfigError, DataError, TriforgeError
from triforge.models import build_model, materialize
from triforge.models.hf import check_hf_dir, read_hf_state_dict
from triforge.parallel.context import ParallelContext
from triforge.parallel.materialize import materialize_sharded
from triforge.parallel.parallelize import ParallelOptions, parallelize
from triforge.parallel.pipeline import split_model, stage_layers
from triforge.trainer.checkpoint import Checkpointer
from triforge.trainer.data import GlobalSampler, WindowLoader, open_dataset
from triforge.trainer.data.blend import BlendLoader, BlendSource, source_sampler
from triforge.trainer.data.config import source_name
from triforge.trainer.data.prefetch import maybe_prefetch
from triforge.trainer.deepspeed_engine import DeepSpeedEngine, deepspeed_config
from triforge.trainer.engine import DataParallelEngine, FSDP2Engine
from triforge.trainer.evaluate import Evaluator
from triforge.trainer.flops import PeakFlops, flops_per_token
from triforge.trainer.layer_drop import LayerDrop
from triforge.trainer.loggers import ConsoleSink, JsonlSink, MetricsSink, WandbSink
from triforge.trainer.moe_balance import ExpertBalance
from triforge.trainer.numerics import NonfiniteInjector, StepGuard, attach_debug_aux_loss
from triforge.trainer.objectives import build_objective
from triforge.trainer.optim import Optimizers
from triforge.trainer.pipeline_runner import PipelineRunner
from triforge.trainer.precision import PrecisionPolicy
from triforge.trainer.step import DirectRunner
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


def build_loaders(job: JobConfig, ctx: ParallelContext, *, log):
    """(dataset, train loader, validation loader or None). The main rank builds a missing
    dataset while the others wait, so ranks never race on the cache; a problem with the data
    it finds is raised on every rank, so all of them exit with its one line (status 2)
    rather than the others failing on a closed connection."""
    if job.data.blend:
        return build_blend_loaders(job, log=log)
    dataset, problem, failure = None, None, None
    if ctx.is_main:
        try:
            dataset = open_dataset(job.data, build_if_missing=True, log=log)
        except TriforgeError as exc:
            problem = exc
        except Exception as exc:  # a bug or an OS error: the main rank reports it in full
            failure, problem = exc, RuntimeError(f"the main rank failed to open the data: "
                                                 f"{type(exc).__name__}: {exc}")
    problem = ctx.broadcast_from_main(problem)  # the others wait here while it builds
    if failure is not None:
        raise failure
    if problem is not None:
        raise problem
    if dataset is None:  # opened once per rank: checksum verification is not repeated
        dataset = open_dataset(job.data, build_if_missing=False, log=log)
    seq = job.trainer.seq_len
    train = dataset.split("train")
    windows = WindowLoader.num_samples(train, seq)
    if job.trainer.batch_size > windows:
        raise ConfigError(f"config: trainer.batch_size({job.trainer.batch_size}) exceeds the "
                          f"{windows} training windows of seq_len {seq} in {dataset.root}; use a "
                          "smaller batch or more data")
    docs = job.data.document_masking
    sampler = GlobalSampler(windows, seed=job.seed)
    loader = WindowLoader(train, seq, sampler, document_ids=docs)
    return dataset, loader, val_loaders({"": dataset}, job)


def val_loaders(datasets: dict, job: JobConfig) -> dict[str, WindowLoader]:
    """Each dataset's validation loader (in order), where its split holds a window."""
    loaders, seq = {}, job.trainer.seq_len
    for name, dataset in datasets.items():
        val = dataset.split("val")
        n_val = WindowLoader.num_samples(val, seq)
        if n_val:
            loaders[name] = WindowLoader(val, seq, GlobalSampler(n_val, seed=job.seed,
                                                                 shuffle=False),
                                         document_ids=job.data.document_masking)
    return loaders


def build_blend_loaders(job: JobConfig, *, log):
    """(first source's dataset, blended train loader, each source's validation loader) for
    ``data.blend``: prepared datasets (or Megatron prefixes) with one tokenizer."""
    datasets, sources, seq = {}, [], job.trainer.seq_len
    for i, src in enumerate(job.data.blend):
        name = source_name(src)
        cfg = dataclasses.replace(job.data, dir=src.path, format=src.format, blend=[])
        dataset = open_dataset(cfg, build_if_missing=False, log=log)
        train = dataset.split("train")  # once: opening a split maps (and may hash) its file
        windows = WindowLoader.num_samples(train, seq)
        if not windows:
            raise DataError(f"data.blend source {name} ({src.path}) has fewer training tokens "
                            f"than one window of trainer.seq_len({seq}) + 1")
        sampler = source_sampler(windows, seed=job.seed, source=i)
        sources.append(BlendSource(name, WindowLoader(train, seq, sampler,
                                                      document_ids=job.data.document_masking)))
        datasets[name] = dataset
    # One vocabulary: the same size and end-of-document id (a Megatron source's ids
    # carry no tokenizer of their own, so the ids are what can be compared)
    ids = {name: (d.tokenizer.vocab_size, d.tokenizer.eos_id) for name, d in datasets.items()}
    if len(set(ids.values())) > 1:
        raise DataError(f"data.blend sources use different vocabularies (size, eos id: {ids}); "
                        "prepare them with one tokenizer")
    loader = BlendLoader(sources, [src.weight for src in job.data.blend])
    return next(iter(datasets.values())), loader, val_loaders(datasets, job)


def build_sinks(job: JobConfig, env: ProcessEnv, run_dir: Path) -> list[MetricsSink]:
    """Metrics are identical on every rank after the reductions: rank 0 writes them."""
    if env.rank != 0:
        return []
    sinks: list[MetricsSink] = [JsonlSink(run_dir / "metrics.jsonl")]
    sinks.append(ConsoleSink(job.trainer.max_steps, 0, progress_bar=job.logging.progress_bar))
    wb = job.logging.wandb
    if wb.enabled:
        mode = wb.mode if wb.mode != "auto" else ("online" if env.wandb_api_key_set else "offline")
        config = dataclasses.asdict(job)
        sinks.append(WandbSink(wb, run_dir=run_dir, config=config, mode=mode, name=run_dir.name))
    return sinks


def build_parallel_model(job: JobConfig, vocab: int, ctx: ParallelContext, device,
                         microbatches: int, engine: DataParallelEngine):
    """(model parts on ``device``, runner): this rank's model or pipeline stages, sharded
    for the layout (data parallelism by ``engine``), with the seed's initial weights."""
    def new_model():
        return build_model(job.model, vocab_size=vocab, attention_backend=job.attention.backend)

    p = job.parallel
    opts = ParallelOptions(sequence_parallel=p.sequence_parallel,
                           activation_checkpoint=p.activation_checkpoint, ac_every=p.ac_every,
                           compile=job.trainer.compile, cp_comm=p.cp_comm)
    if ctx.meshes is None:
        model = new_model()
        parallelize(model, ctx.dims, None, opts, wrap_data_parallel=engine.wrap)
        parts = [materialize(model, device, seed=job.seed)]
    else:
        parts, stage_ids, n_stages = [new_model()], [0], 1
        if ctx.dims.pp > 1:
            parts, stage_ids, n_stages = split_for_rank(new_model(), job, ctx)
        for part in parts:
            parallelize(part, ctx.dims, ctx.meshes, opts, wrap_data_parallel=engine.wrap)
            materialize_sharded(part, device, is_main=ctx.is_main,
                                full_init=lambda: materialize(new_model(), "cpu", seed=job.seed))
    if ctx.dims.pp == 1:
        return parts, DirectRunner(parts[0], microbatches=microbatches,
                                   sync=engine.set_gradient_sync,
                                   backward=engine.backward)
    runner = PipelineRunner(parts, stage_ids, n_stages, ctx, device,
                            schedule=job.parallel.pp_schedule,
                            microbatches=job.parallel.microbatches or microbatches)
    return parts, runner


def apply_init_from_hf(job: JobConfig, parts: list, vocab: int, ctx: ParallelContext, *,
                       log) -> None:
    """checkpoint.init_from_hf: replace the seed's initial weights of ``parts`` by those of a
    Hugging Face Llama directory, unless a checkpoint will be resumed (it would overwrite
    them). Every rank checks config.json and the tensor headers, so a mismatch stops all
    ranks with the same message; the main rank alone reads the weights and broadcasts them
    into every rank's shards, as ``materialize_sharded`` does for the seed's weights."""
    path, ckpt = job.checkpoint.init_from_hf, job.checkpoint
    if not path:
        return
    if ckpt.resume != "none" and (ckpt.resume != "auto" or
                                  Checkpointer(Path(job.run.dir), ckpt).complete_steps()):
        log(f"checkpoint.init_from_hf={path} ignored: resuming from a checkpoint of "
            f"{job.run.dir} (checkpoint.resume={ckpt.resume}), which wins")
        return
    try:
        check_hf_dir(Path(path), job.model, vocab)
    except ValueError as exc:
        raise ConfigError(f"init_from_hf: {exc}") from None
    full_sd = (read_hf_state_dict(Path(path), tied=job.model.tie_embeddings,
                                  num_experts=job.model.moe.num_experts) if ctx.is_main else {})
    # strict=False: a pipeline stage holds only some parameters; check_hf_dir saw them all.
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=ctx.meshes is not None,
                               strict=False)
    for part in parts:
        set_model_state_dict(part, full_sd, options=options)
    log(f"initial weights from {path} (checkpoint.init_from_hf)")


def split_for_rank(model, job: JobConfig, ctx: ParallelContext):
    """(parts, stage ids, number of stages) of this pipeline rank (loop order)."""
    pp, virtual = ctx.dims.pp, job.parallel.pp_virtual_stages
    n_stages = pp * virtual
    layers = stage_layers(job.model.n_layers, n_stages, job.parallel.pp_layers_per_stage)
    pp_rank = ctx.pp_rank
    stage_ids = [pp_rank + k * pp for k in range(virtual)]
    parts = [split_model(model, layers[sid], first=sid == 0, last=sid == n_stages - 1)
             for sid in stage_ids]
    return parts, stage_ids, n_stages


def build_engine(job: JobConfig, ctx: ParallelContext, precision):
    """The data-parallel engine ``parallel.engine`` names (trainer/engine.py)."""
    p = job.parallel
    if p.engine == "deepspeed":
        try:
            config = deepspeed_config(
                batch_size=job.trainer.batch_size, micro_batch_size=job.trainer.micro_batch_size,
                dp=ctx.dims.dp, grad_clip=job.trainer.grad_clip, stage=p.zero_stage,
                offload_optimizer=p.offload_optimizer, offload_params=p.offload_params,
                fp16=job.precision if precision.loss_scaling else None,
                user_file=p.deepspeed_config)
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None
        return DeepSpeedEngine(ctx, config, cpu_fp16=job.debug.deepspeed_cpu_fp16)
    return FSDP2Engine(ctx, reshard_after_forward=p.fsdp_reshard_after_forward,
                       mp_policy=precision.fsdp_policy())


def build_trainer(job: JobConfig, env: ProcessEnv, ctx: ParallelContext, device, *, log):
    """Everything ``Trainer.fit`` needs; returns (trainer, tokenizer)."""
    dims = ctx.dims
    seed_everything(job.seed)
    dataset, loader, val_loaders_by_source = build_loaders(job, ctx, log=log)
    objective = build_job_objective(job, dataset.tokenizer)
    try:
        vocab = job.model.padded_vocab(objective.vocab_size)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    precision = build_precision(job, ctx)
    engine = build_engine(job, ctx, precision)
    parts, runner = build_parallel_model(job, vocab, ctx, device,
                                         job.trainer.microbatches(dims.dp), engine)
    # Initial weights before the engine takes the parts: DeepSpeed copies them into its
    # fp32 master partitions when it starts.
    apply_init_from_hf(job, parts, vocab, ctx, log=log)
    engine.attach(parts, Optimizers(parts, job.optim))
    if isinstance(runner, DirectRunner):
        runner.model = engine.forward_module(runner.model)
    attach_debug_aux_loss(parts, layer=job.debug.aux_l2_layer, coeff=job.debug.aux_l2_coeff)
    non_emb = job.model.num_params(vocab, embedding=False, active=True)  # MFU: active only
    peak = PeakFlops(device, job.logging.peak_flops, precision.compute_dtype)
    active = (f" ({job.model.num_params(vocab, active=True) / 1e6:.2f}M active)"
              if job.model.moe.enabled else "")
    log(f"model {job.model.name}: {job.model.num_params(vocab) / 1e6:.2f}M parameters{active}, "
        f"vocab {vocab}, on {device} x {dims.world_size}; "
        f"MFU against {peak.value / 1e12:.2f} TFLOP/s per device ({peak.source})")
    run_dir = Path(job.run.dir)
    evaluator = None
    if val_loaders_by_source and job.trainer.eval_every:
        evaluator = Evaluator(val_loaders_by_source, objective, batch_size=job.trainer.batch_size,
                              num_batches=job.trainer.eval_batches, every=job.trainer.eval_every,
                              dp_rank=ctx.dp_rank, dp_size=dims.dp)
    trainer = Trainer(
        cfg=job.trainer, optim_cfg=job.optim, parts=parts,
        engine=engine, runner=runner, objective=objective,
        loader=maybe_prefetch(loader, enabled=job.data.prefetch, device=device),
        evaluator=evaluator,
        checkpointer=Checkpointer(run_dir, job.checkpoint, log=log, ctx=ctx, repair=True),
        throughput=Throughput(
            flops_per_token=flops_per_token(non_emb, job.model.n_layers, job.model.d_model,
                                            job.trainer.seq_len),
            peak=peak, num_devices=dims.world_size, device=device,
            warn=log,
        ),
        sinks=build_sinks(job, env, run_dir), device=device, config_yaml=to_yaml(job),
        precision=precision,
        scaler=engine.loss_scaler(job.precision, enabled=precision.loss_scaling),
        guard=StepGuard(ctx, policy=job.trainer.nonfinite, spike_zscore=job.trainer.spike_zscore,
                        spike_window=job.trainer.spike_window,
                        loss_scaling=precision.loss_scaling),
        injector=NonfiniteInjector(job.debug, ctx.rank), ctx=ctx, message=log,
        hold_for_signal=(job.debug.hold_for_signal_at_step, job.debug.hold_timeout_s),
    )
    if job.model.moe.enabled:
        moe = job.model.moe
        ExpertBalance(parts, ctx, device, bias_rate=moe.router.bias_update_rate,
                      moe_layer_ids=[i for i in range(job.model.n_layers) if moe.is_moe_layer(i)],
                      num_experts=moe.num_experts,
                      microbatches=runner.microbatches).install(trainer.hooks)
    if job.layer_drop.enabled:
        LayerDrop(job.layer_drop, seed=job.seed, n_layers=job.model.n_layers, parts=parts,
                  ctx=ctx).install(trainer.hooks)
    return trainer, dataset.tokenizer


def build_job_objective(job: JobConfig, tokenizer):
    """The objective; its ``vocab_size`` (tokenizer plus the objective's special tokens) is
    what the model's embedding is sized from, in training and in generation alike."""
    try:
        return build_objective(job.objective, tokenizer_vocab=tokenizer.vocab_size,
                               pad_id=tokenizer.pad_id, seed=job.seed,
                               reset_positions=job.data.reset_positions)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None


def build_precision(job: JobConfig, ctx: ParallelContext) -> PrecisionPolicy:
    """FSDP2 casts when it wraps the model (``ParallelDims.fsdp_enabled``), else autocast.
    Under DeepSpeed, bf16 is autocast too (fp32 weights in its ZeRO buffers, bf16 compute);
    fp16 is DeepSpeed's own (fp16 weights, as FSDP2's gathered ones), so no autocast."""
    if job.parallel.engine == "deepspeed":
        casts = job.precision.dtype == "fp16"
    else:
        casts = ctx.dims.fsdp_enabled
    return PrecisionPolicy(job.precision, engine_casts=casts)
