"""Where text comes from: user files and folders, or the built-in corpus.

The built-in corpus is the Python standard library source of the running interpreter: every
Python installation has it, so a first run needs no download.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from triforge.errors import DataError

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".json", ".jsonl", ".c", ".h")
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


def read_documents(files: list[Path], *, text_key: str = "text") -> Iterator[str]:
    """The documents of ``files``, streamed: one per line of a ``.jsonl`` file (its
    ``text_key`` field, the common interchange form), one per file otherwise. Undecodable
    bytes are replaced rather than failing the build."""
    for f in files:
        if f.suffix == ".jsonl":
            yield from _jsonl_documents(f, text_key)
        else:
            yield f.read_text(encoding="utf-8", errors="replace")


def _jsonl_documents(path: Path, text_key: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number} is not valid JSON ({exc.msg}); JSONL input "
                                "holds one JSON object per line") from None
            text = record.get(text_key) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(f"{path}:{number} has no string '{text_key}' field; set "
                                "data.text_key to the field that holds the text")
            yield text
