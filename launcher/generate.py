"""``triforge-generate run.dir=RUN [generate.prompt=...] [generate.max_new_tokens=N]``:
sample text from the run's latest checkpoint (or ``checkpoint.resume=PATH``)."""

from __future__ import annotations

import sys
from pathlib import Path

from triforge.errors import CheckpointError, TriforgeError
from triforge.models import build_model, materialize
from triforge.trainer.checkpoint import Checkpointer
from triforge.trainer.data import open_dataset
from triforge.trainer.generate import sample_text
from triforge.trainer.state import ModelState

from .build import build_job_objective, pick_device
from .config import load_config, load_run_config
from .env import read_env


def generate(overrides: list[str]) -> str:
    job = load_config(overrides)
    run_dir = Path(job.run.dir)
    saved = run_dir / "config.yaml"
    if saved.is_file():  # the run's own model and data settings, then the user's overrides
        job = load_run_config(saved, overrides)
    checkpointer = Checkpointer(run_dir, job.checkpoint)
    path = checkpointer.find_resume()
    if path is None:
        raise CheckpointError(f"no checkpoint in {run_dir}/checkpoints; train first or set run.dir")
    dataset = open_dataset(job.data, build_if_missing=False)
    device = pick_device(job.trainer.device, read_env())
    vocab = job.model.padded_vocab(build_job_objective(job, dataset.tokenizer).vocab_size)
    model = materialize(build_model(job.model, vocab_size=vocab,
                                    attention_backend=job.attention.backend), device, seed=0)
    checkpointer.load_tensors(path, ModelState(model))
    return sample_text(model, dataset.tokenizer, job.generate, device=device,
                       max_context=job.model.max_seq_len, seed=job.seed)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        print(generate(args))
    except TriforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
