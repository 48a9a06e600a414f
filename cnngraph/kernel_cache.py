"""The kernel cache: compiled artifacts (OpenCL program binaries, CUDA autotuning choices) on
disk, keyed by a SHA-256 of everything that determines them (source, options, device, driver).

An entry is written under a temporary name and renamed into place, so a reader sees a whole
entry or none, and two processes filling the same entry at once both leave a valid one (the last
rename wins).

An entry is code: an OpenCL binary for a CPU device runs inside this process. So the cache trusts
only what the current user wrote:
- its folders (created 0700) must belong to the current user and be writable by no one else;
  otherwise the cache is not used, with one note per folder;
- an entry is read only when it is a regular file of at most MAX_ENTRY_BYTES (opened with
  O_NOFOLLOW | O_NONBLOCK and checked with fstat: a symlink, FIFO or device is never read);
- an entry carries an HMAC-SHA256 of its name and payload under a per-user secret key, the file
  `key` in the cache folder (0600, made atomically on first use). An entry someone without the key
  wrote or altered, or a truncated or corrupted one, fails it and is rebuilt and written over.

The folder is $CNNGRAPH_CACHE_DIR, else $XDG_CACHE_HOME/cnngraph, else ~/.cache/cnngraph;
CNNGRAPH_CACHE_DIR=off disables the cache. A folder that cannot be written only costs the speed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import warnings
from pathlib import Path
from .errors import CnnGraphError, CnnGraphWarning
from .files import atomic_write

MAGIC = b"cnngraph-cache-2\n"  # 2: authenticated entries; those of version 1 are rebuilt
TAG_SIZE = 32                  # bytes of the HMAC-SHA256 that follows MAGIC
MAX_ENTRY_BYTES = 256 << 20    # larger files are never read (an OpenCL binary of a whole network is a few MB)
KEY_FILE, KEY_SIZE = "key", 32
_noted: set[str] = set()       # folders already noted as not trusted (one note each per process)


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
    """The payload, or None when the entry is missing, is not a regular file, or fails its
    authentication (then the caller rebuilds it and writes it again)."""
    key = trusted_key(path)
    blob = read_regular_file(path, len(MAGIC) + TAG_SIZE + MAX_ENTRY_BYTES) if key else None
    if blob is None or not blob.startswith(MAGIC):
        return None
    tag, payload = blob[len(MAGIC):len(MAGIC) + TAG_SIZE], blob[len(MAGIC) + TAG_SIZE:]
    if hmac.compare_digest(tag, entry_tag(key, path, payload)):
        return payload
    return None  # not deleted: the caller writes a good one over it (another process may already have)


def write_entry(path: Path, payload: bytes) -> None:
    """Store `payload` whole or not at all."""
    key = trusted_key(path)
    if key is None or len(payload) > MAX_ENTRY_BYTES:
        return
    try:
        atomic_write(path, lambda f: f.write(MAGIC + entry_tag(key, path, payload) + payload))
    except (OSError, CnnGraphError):
        pass  # a read-only or full disk: the next compile builds again, which is only slower


def entry_tag(key: bytes, path: Path, payload: bytes) -> bytes:
    """The HMAC of an entry; its name is signed too, so an entry is valid only where it was written."""
    return hmac.new(key, f"{path.parent.name}/{path.name}\0".encode() + payload, hashlib.sha256).digest()


# --- what the cache trusts ------------------------------------------------------------------------

def trusted_key(path: Path) -> bytes | None:
    """The key that signs the entry at `path` (root/kind/name), or None when the cache folders
    cannot be made or are not the current user's alone."""
    root = path.parent.parent
    if not (trusted_folder(root) and trusted_folder(path.parent)):
        return None
    return read_key(root / KEY_FILE) or make_key(root / KEY_FILE)


def trusted_folder(folder: Path) -> bool:
    """Whether `folder` (made 0700 when missing) belongs to the current user and no one else may
    write in it; notes once why not."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = os.stat(folder)
    except OSError:
        return False  # a read-only disk, a file in the way: building again is only slower
    why = distrust(found)
    if why and str(folder) not in _noted:
        _noted.add(str(folder))
        warnings.warn(CnnGraphWarning(f"{folder}: the kernel cache is not used: {why}; a cached kernel runs as your "
                                      f"code, so its folder must be yours alone (chmod 700, or set "
                                      f"CNNGRAPH_CACHE_DIR to another folder)"), stacklevel=2)
    return why is None


def distrust(found: os.stat_result) -> str | None:
    """Why a folder with this status may hold entries someone else wrote, or None."""
    if found.st_uid != os.getuid():
        return f"it belongs to user id {found.st_uid}, not to you ({os.getuid()})"
    if found.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"others may write in it (mode {stat.S_IMODE(found.st_mode):o})"
    return None


def read_key(path: Path) -> bytes | None:
    """The secret key, or None when it is missing or not private: a regular file of KEY_SIZE bytes
    that the current user owns and no one else may read or write."""
    key = read_regular_file(path, KEY_SIZE, private=True)
    return key if key is not None and len(key) == KEY_SIZE else None


def make_key(path: Path) -> bytes | None:
    """A new secret key at `path`, written whole under a temporary name first. A key another
    process made meanwhile is kept (os.link never overwrites); one that is not private is replaced."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_SIZE))
        try:
            os.link(tmp, path)
        except FileExistsError:
            if read_key(path) is None:  # not private (readable by others, a symlink, cut short)
                os.replace(tmp, path)
        return read_key(path)  # ours, or the one of the process that made it first
    except OSError:
        return None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # renamed into place


def read_regular_file(path: Path, limit: int, private: bool = False) -> bytes | None:
    """The contents of `path` when it is a regular file of at most `limit` bytes (and, if `private`,
    the current user's, unreadable by others), else None. Never follows a symlink (O_NOFOLLOW) nor
    blocks on a FIFO (O_NONBLOCK); fstat refuses devices and folders."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_size > limit:
            return None
        if private and (found.st_uid != os.getuid() or found.st_mode & 0o077):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= limit else None  # grew since fstat
