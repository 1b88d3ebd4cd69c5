"""Shared fixtures: a tiny text corpus and a dataset built from it, once per session.

Kernel tests run the real Triton code; without a GPU they run it in Triton's interpreter.
TRITON_INTERPRET is read when ``triton.jit`` decorates a kernel, so it is set here, before
any test imports kernels/attention/triton.py.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from triforge.trainer.data import DataConfig, open_dataset


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A few real text files (stdlib modules), so tests train on Python source quickly."""
    root = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("argparse.py", "dataclasses.py", "functools.py", "textwrap.py", "string.py",
                 "bisect.py", "heapq.py", "shlex.py"):
        (root / name).write_text((stdlib / name).read_text(encoding="utf-8"), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def data_overrides(corpus_dir, tmp_path_factory) -> list[str]:
    """Config overrides that point a run at the small corpus (built once into a cache)."""
    cache = tmp_path_factory.mktemp("cache")
    return [f"data.paths=[{corpus_dir}]", f"data.cache_dir={cache}", "data.val_every=4"]


@pytest.fixture(scope="session")
def small_dataset(corpus_dir, tmp_path_factory):
    cfg = DataConfig(paths=[str(corpus_dir)], cache_dir=str(tmp_path_factory.mktemp("ds")),
                     val_every=4)
    return open_dataset(cfg, build_if_missing=True, log=lambda *_: None)
