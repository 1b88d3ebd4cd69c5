"""Schemas of the trainer-owned config groups: trainer, optim, checkpoint, logging, generate."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainerConfig:
    """The loop. ``batch_size`` is the global batch in sequences per optimizer step, whatever
    the layout; ``micro_batch_size`` (0: no accumulation) is per rank per forward pass."""

    max_steps: int = 200
    stop_at_step: int = 0  # end this invocation early at that step (0: run to max_steps)
    batch_size: int = 8
    micro_batch_size: int = 0
    seq_len: int = 256
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    log_every: int = 10
    eval_every: int = 100  # 0: never
    eval_batches: int = 4
    device: str = "auto"  # auto | cpu | cuda
    deterministic: bool = False
    compile: bool = False  # torch.compile each block (inductor; on CPU its C++ backend)
    sample_at_end: bool = True
    nonfinite: str = "halt"  # skip | halt: what a non-finite loss or gradient does
    spike_zscore: float = 0.0  # skip updates whose loss is this many std above recent (0: off)
    spike_window: int = 100  # applied steps the spike statistics look back over

    def microbatches(self, dp: int) -> int:
        """Forward passes per rank and optimizer step (accumulation or pipeline microbatches)."""
        per_rank = self.batch_size // dp
        return per_rank // (self.micro_batch_size or per_rank)

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "seq_len", "log_every", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"trainer.{name}({getattr(self, name)}) must be > 0")
        for name in ("stop_at_step", "micro_batch_size", "eval_every", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name}({getattr(self, name)}) must be >= 0")
        if self.nonfinite not in ("skip", "halt"):
            raise ValueError(f"trainer.nonfinite='{self.nonfinite}' must be skip or halt")
        if self.spike_zscore < 0 or self.spike_window < 10:
            raise ValueError(f"trainer.spike_zscore({self.spike_zscore}) must be >= 0 and "
                             f"spike_window({self.spike_window}) >= 10")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.device='{self.device}' must be auto, cpu or cuda")


OPTIM_IMPLS = ("foreach", "fused", "apex")


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then cosine or linear decay to ``lr * min_lr_ratio``, a
    constant rate, or warmup-stable-decay."""

    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine | linear | constant | wsd
    # wsd (warmup-stable-decay): lr held after warmup, then a linear decay to
    # lr * min_lr_ratio over the last decay_steps steps (Hu et al. 2024, Hägele et al. 2024)
    decay_steps: int = 0
    # The AdamW implementation: foreach (PyTorch, one kernel per op over all tensors), fused
    # (PyTorch's single fused kernel, CPU and CUDA) or apex (apex's FusedAdam, CUDA). The
    # same update up to rounding; foreach and fused share one checkpoint format.
    impl: str = "foreach"

    def validate(self) -> None:
        if self.impl not in OPTIM_IMPLS:
            raise ValueError(f"optim.impl='{self.impl}' is not one of {OPTIM_IMPLS}")
        if self.lr <= 0 or self.eps <= 0:
            raise ValueError(f"optim.lr({self.lr}) and optim.eps({self.eps}) must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay({self.weight_decay}) must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio({self.min_lr_ratio}) must be in [0, 1]")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps({self.warmup_steps}) must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"optim.beta1({self.beta1}), beta2({self.beta2}) must be in [0, 1)")
        if self.schedule not in ("cosine", "linear", "constant", "wsd"):
            raise ValueError(f"optim.schedule='{self.schedule}' must be cosine, linear, "
                             "constant or wsd")
        if self.decay_steps < 0 or (self.schedule == "wsd" and not self.decay_steps):
            raise ValueError(f"optim.decay_steps({self.decay_steps}) must be >= 0, and > 0 "
                             "with optim.schedule=wsd (the steps of its final decay)")


@dataclass
class CheckpointConfig:
    every: int = 100  # steps between saves (0: only at the end)
    keep: int = 3  # newest complete checkpoints kept (0: keep all)
    resume: str = "auto"  # auto | none | path to a step_N directory
    save_at_end: bool = True
    # Write tensors in a background thread: the step only waits for the copy to host memory,
    # and the checkpoint is committed (manifest, rename) at a later step boundary.
    async_save: bool = False
    # A Hugging Face Llama directory (e.g. from triforge-export) to start from instead of the
    # seed's random weights; ignored when a checkpoint is resumed.
    init_from_hf: str = ""
    # Continual pretraining: start from another run's step_N checkpoint (ignored when this
    # run resumes its own), loading its weights only (new optimizer, schedule from step 0,
    # new data cursor) or its weights and optimizer state (Adam's moments and step count).
    init_from: str = ""
    load: str = "weights"  # weights | weights+optimizer

    def validate(self) -> None:
        if self.every < 0 or self.keep < 0:
            raise ValueError(f"checkpoint.every({self.every}) and keep({self.keep}) must be >= 0")
        if self.load not in ("weights", "weights+optimizer"):
            raise ValueError(f"checkpoint.load='{self.load}' must be weights or "
                             "weights+optimizer")
        if self.init_from and self.init_from_hf:
            raise ValueError("checkpoint.init_from and checkpoint.init_from_hf both name "
                             "initial weights; set one")


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "triforge"
    mode: str = "auto"  # auto (online with an API key, else offline) | online | offline


@dataclass
class LoggingConfig:
    progress_bar: bool = True
    peak_flops: float = 0.0  # per device; 0: a table for known GPUs, a measurement on CPU
    plot: bool = True  # loss.png in run.dir at the end (rank 0; matplotlib, ~0.7 s)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        if self.peak_flops < 0:
            raise ValueError(f"logging.peak_flops({self.peak_flops}) must be >= 0")
        if self.wandb.mode not in ("auto", "online", "offline"):
            raise ValueError(f"logging.wandb.mode='{self.wandb.mode}' must be auto, online "
                             "or offline")


@dataclass
class GenerateConfig:
    prompt: str = "def "
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int = 50  # 0: no top-k cut

    def validate(self) -> None:
        if not self.prompt:
            raise ValueError("generate.prompt is empty; give some text to continue, e.g. "
                             "generate.prompt='def '")
        if self.max_new_tokens <= 0:
            raise ValueError(f"generate.max_new_tokens({self.max_new_tokens}) must be > 0")
        if self.temperature < 0 or self.top_k < 0:
            raise ValueError(f"generate.temperature({self.temperature}) and "
                             f"top_k({self.top_k}) must be >= 0")
