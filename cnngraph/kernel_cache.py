"""The kernel cache: compiled artifacts (OpenCL program binaries, CUDA autotuning choices) on
disk, keyed by a SHA-256 of everything that determines them (source, options, device, driver).

An entry is written under a temporary name and renamed into place, so a reader sees a whole
entry or none, and two processes filling the same entry at once both leave a valid one (the last
rename wins). Each entry carries a checksum of its payload: a truncated or corrupted entry is
rebuilt and written over, never trusted.

The folder is $CNNGRAPH_CACHE_DIR, else $XDG_CACHE_HOME/cnngraph, else ~/.cache/cnngraph;
CNNGRAPH_CACHE_DIR=off disables the cache. A folder that cannot be written only costs the speed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from .errors import CnnGraphError
from .files import atomic_write

MAGIC = b"cnngraph-cache-1\n"
DIGEST_SIZE = 32  # bytes of the SHA-256 that follows MAGIC


def cache_dir() -> Path | None:
    """Where entries live, or None when the cache is off."""
    configured = os.environ.get("CNNGRAPH_CACHE_DIR")
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "none") else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnngraph"


def cache_key(*parts: str | bytes) -> str:
    """A hex SHA-256 over the parts, length-prefixed so ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def entry_path(kind: str, key: str) -> Path | None:
    """Where the entry for (kind, key) lives, or None when the cache is off."""
    root = cache_dir()
    return None if root is None else root / kind / f"{key}.bin"


def read_entry(path: Path) -> bytes | None:
    """The payload, or None when the entry is missing or does not pass its checksum (then the
    caller rebuilds it and writes it again)."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    payload = blob[len(MAGIC) + DIGEST_SIZE:]
    if blob[:len(MAGIC)] == MAGIC and blob[len(MAGIC):len(MAGIC) + DIGEST_SIZE] == hashlib.sha256(payload).digest():
        return payload
    return None  # not deleted: the caller writes a good one over it (another process may already have)


def write_entry(path: Path, payload: bytes) -> None:
    """Store `payload` whole or not at all."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(MAGIC + hashlib.sha256(payload).digest() + payload))
    except (OSError, CnnGraphError):
        pass  # a read-only or full disk: the next compile builds again, which is only slower
