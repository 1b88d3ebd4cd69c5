"""Where text comes from: user files and folders, or the built-in corpus.

The built-in corpus is the Python standard library source of the running interpreter: every
Python installation has it, so a first run needs no download.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from triforge.errors import DataError

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".json", ".c", ".h")
_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__"}


def stdlib_files() -> list[Path]:
    """The .py files of the standard library, without its test suite, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts)
    ]
    return sorted(files)


def text_files(paths: list[str]) -> list[Path]:
    """Expand files and folders into a sorted list of text files."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        else:
            raise DataError(f"data.paths entry '{raw}' does not exist; give text files or folders")
    if not found:
        raise DataError(f"data.paths {paths} hold no text files (suffixes {TEXT_SUFFIXES})")
    return sorted(set(found))


def source_files(paths: list[str]) -> list[Path]:
    """The files a dataset is built from: ``paths`` or, when empty, the built-in corpus."""
    return text_files(paths) if paths else stdlib_files()


def sources_fingerprint(files: list[Path], extra: str) -> str:
    """A short hash of the file list (paths, sizes, mtimes) and ``extra`` (tokenizer settings),
    so a changed corpus or tokenizer gets a new cache entry instead of stale tokens."""
    h = hashlib.sha256(extra.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def read_documents(files: list[Path]) -> Iterator[str]:
    """One document per file; undecodable bytes are replaced rather than failing the build."""
    for f in files:
        yield f.read_text(encoding="utf-8", errors="replace")
