"""The manifest that makes a checkpoint directory trustworthy.

``manifest.json`` lists every file of a checkpoint (path relative to the checkpoint, size in
bytes, sha256) and the format version. It is written last, after every rank has finished
writing, so a directory without a readable manifest was never committed, and a file that
disagrees with its entry was truncated or altered since: such a checkpoint is never loaded.
Files the manifest does not list are ignored.

Checkpoints must live on a filesystem every rank sees (NFS, Lustre, GPFS, a shared volume):
the main rank hashes the files all ranks wrote, including other nodes' tensor shards. On
node-local disks it would not see those shards and the manifest would not cover them.

Hashing reads every byte once, streamed in fixed-size chunks (memory stays flat whatever the
checkpoint size). Files are hashed on a few threads because hashlib releases the GIL on
large buffers: sharded checkpoints are many files, and one core hashes about 0.5-1 GB/s.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from triforge.errors import CheckpointError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_CHUNK_BYTES = 4 << 20
_HASH_THREADS = 8


@dataclass(frozen=True)
class ManifestSummary:
    """What ``write_manifest`` covered and how long hashing took."""

    files: int
    total_bytes: int
    seconds: float


def sha256_file(path: Path) -> str:
    """The sha256 of ``path`` as hex, read in chunks into one reused buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _hash_all(paths: list[Path]) -> list[str | None]:
    """sha256 of each path (None where the file cannot be read), hashed on a few threads."""

    def one(path: Path) -> str | None:
        try:
            return sha256_file(path)
        except OSError:
            return None

    if len(paths) <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, len(paths))) as pool:
        return list(pool.map(one, paths))


def write_manifest(root: Path) -> ManifestSummary:
    """Hash every file under ``root`` and write ``root/manifest.json`` (atomically, last)."""
    start = time.perf_counter()
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.name != MANIFEST)
    paths = [root / name for name in names]
    digests = _hash_all(paths)
    files = []
    for name, path, digest in zip(names, paths, digests, strict=True):
        if digest is None:
            raise CheckpointError(f"cannot read {path} to hash it; check the checkpoint disk")
        files.append({"path": name, "size": path.stat().st_size, "sha256": digest})
    doc = {"format_version": FORMAT_VERSION, "files": files}
    # Write then rename: a crash mid-write leaves no manifest.json rather than a partial one,
    # and fsync so the commit marker does not outlive a power cut while its content is lost.
    partial = root / (MANIFEST + ".partial")
    with open(partial, "w") as f:
        f.write(json.dumps(doc, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    partial.replace(root / MANIFEST)
    total = sum(entry["size"] for entry in files)
    return ManifestSummary(len(files), total, time.perf_counter() - start)


def _read_entries(root: Path) -> list[tuple[str, int, str]] | str:
    """The manifest's (path, size, sha256) entries, or the fault as a phrase."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        return "is incomplete (no manifest.json); it was never committed"
    try:
        doc = json.loads(manifest.read_text())
        version = doc["format_version"]
        entries = [(str(e["path"]), int(e["size"]), str(e["sha256"])) for e in doc["files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"has an unreadable manifest.json ({type(exc).__name__}: {exc})"
    if version != FORMAT_VERSION:
        return (f"has manifest format {version} but this triforge reads format "
                f"{FORMAT_VERSION}; load it with the triforge version that wrote it")
    return entries


def check(root: Path, *, hashes: bool = True) -> str | None:
    """The first fault of checkpoint ``root`` as a phrase ("is missing tensors/x"), or None
    when it is sound. ``hashes=False`` checks the manifest, presence and sizes only: one stat
    per file instead of reading every byte.

    The manifest must describe exactly the checkpoint's files: an entry that resolves
    outside ``root`` (``../x``, an absolute path, a symlink out) is refused before anything
    is opened, and a file in ``root`` that no entry lists is a fault too, so an emptied
    ``files`` list cannot pass."""
    entries = _read_entries(root)
    if isinstance(entries, str):
        return entries
    inside = root.resolve()
    listed = set()
    for name, _, _ in entries:
        resolved = (root / name).resolve()
        if Path(name).is_absolute() or not resolved.is_relative_to(inside):
            return f"lists {name!r} in manifest.json, a path outside the checkpoint"
        listed.add(resolved)
    for name, size, _ in entries:
        path = root / name
        if not path.is_file():
            return f"is missing {name}"
        actual = path.stat().st_size
        if actual < size:
            return f"has a truncated {name} ({actual} of {size} bytes)"
        if actual != size:
            return f"has an altered {name} ({actual} bytes where manifest.json lists {size})"
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST and path.resolve() not in listed:
            return f"has {path.relative_to(root).as_posix()}, which manifest.json does not list"
    if not hashes:
        return None
    digests = _hash_all([root / name for name, _, _ in entries])
    for (name, _, expected), digest in zip(entries, digests, strict=True):
        if digest is None:
            return f"has an unreadable {name}"
        if digest != expected:
            return f"has an altered {name} (its sha256 differs from manifest.json)"
    return None


def verify(root: Path, *, hashes: bool = True) -> None:
    """Raise CheckpointError naming the file and the fault unless checkpoint ``root`` matches
    its manifest."""
    fault = check(root, hashes=hashes)
    if fault is not None:
        raise CheckpointError(f"checkpoint {root} {fault}")
