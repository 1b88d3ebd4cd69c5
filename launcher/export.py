"""``triforge-export run.dir=RUN [export.dir=OUT] [export.step=N] [export.dtype=float32]``:
write a run's checkpoint (the latest verified one, or ``step_N``) as a Hugging Face Llama
directory, ``config.json`` + ``model.safetensors``, loadable with
``transformers.LlamaForCausalLM.from_pretrained(OUT)``. OUT defaults to ``RUN/hf/step_N``.

Checkpoints keep full parameter names whatever the layout (FSDP, TP, PP), so loading one
into an unsharded model in this single process works for every layout.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path

from triforge.errors import CheckpointError, ConfigError, TriforgeError
from triforge.models import build_model, materialize
from triforge.models.hf import DTYPES, save_hf
from triforge.models.hf_mixtral import mixtral_problems
from triforge.trainer.checkpoint import Checkpointer
from triforge.trainer.data import open_dataset
from triforge.trainer.state import ModelState

from .build import build_job_objective
from .config import load_config, load_run_config


@dataclass
class ExportOptions:
    dir: str = ""  # empty: RUN/hf/step_N
    step: int = 0  # 0: the latest verified checkpoint
    dtype: str = "float32"


def split_overrides(args: list[str]) -> tuple[ExportOptions, list[str]]:
    """(the ``export.*`` options, every other override for the job config)."""
    opts, rest = ExportOptions(), []
    names = [f.name for f in fields(ExportOptions)]
    for arg in args:
        key, _, value = arg.partition("=")
        if not key.startswith("export."):
            rest.append(arg)
            continue
        name = key.removeprefix("export.")
        if name not in names:
            raise ConfigError(f"{key} is not an export option; use one of "
                              + ", ".join(f"export.{n}" for n in names))
        try:
            setattr(opts, name, type(getattr(opts, name))(value))
        except ValueError:
            raise ConfigError(f"{key}={value} must be an integer") from None
    if opts.dtype not in DTYPES:
        raise ConfigError(f"export.dtype={opts.dtype} must be one of {', '.join(DTYPES)}")
    if opts.step < 0:
        raise ConfigError(f"export.step({opts.step}) must be >= 0 (0: the latest checkpoint)")
    return opts, rest


def export(args: list[str]) -> Path:
    """Write the HF directory for ``args`` (CLI overrides); returns its path."""
    opts, overrides = split_overrides(args)
    run_dir = Path(load_config(overrides).run.dir)
    # Export never trains: any checkpoint.resume the run was saved with must not apply here.
    chosen = run_dir / "checkpoints" / f"step_{opts.step}" if opts.step else "auto"
    overrides = [*overrides, f"checkpoint.resume={chosen}"]
    saved = run_dir / "config.yaml"
    job = load_run_config(saved, overrides) if saved.is_file() else load_config(overrides)
    if job.model.moe.enabled and (problems := mixtral_problems(job.model)):
        raise ConfigError(f"export: model {job.model.name} cannot be written as a Mixtral: "
                          f"{'; '.join(problems)}")
    if job.objective.name != "clm":
        raise ConfigError(f"export: objective.name={job.objective.name} trains with non-causal "
                          "attention masks, but LlamaForCausalLM is causal and would compute "
                          "other logits; only objective=clm runs can be exported")
    checkpointer = Checkpointer(run_dir, job.checkpoint)
    if opts.step and opts.step not in checkpointer.complete_steps():
        raise CheckpointError(f"export.step={opts.step}: no step_{opts.step} in {checkpointer.root}"
                              f" (it has steps {checkpointer.complete_steps()})")
    path = checkpointer.find_resume()
    if path is None:
        raise CheckpointError(f"no checkpoint in {run_dir}/checkpoints; train first or set run.dir")
    tokenizer = open_dataset(job.data, build_if_missing=False).tokenizer
    vocab = job.model.padded_vocab(build_job_objective(job, tokenizer).vocab_size)
    model = materialize(build_model(job.model, vocab_size=vocab), "cpu", seed=0)
    Checkpointer.load_tensors(path, ModelState(model))
    out = Path(opts.dir) if opts.dir else run_dir / "hf" / path.name
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export.dir={out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(f"export.dir={out} holds other files; choose a new or empty directory "
                          "(an earlier export there is replaced)")
    return save_hf(model, out, dtype=opts.dtype, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        out = export(args)
    except TriforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {out} (load with transformers.LlamaForCausalLM.from_pretrained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
