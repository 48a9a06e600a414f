"""The kernel cache as a code-execution surface: what it trusts, and what it refuses.

- Folders: made 0700; one that belongs to another user, or that group or others may write, is not
  used (one note per folder).
- Entries: only regular files are read (a FIFO does not hang, a symlink to /dev/zero does not
  exhaust memory), of bounded size; each is authenticated (HMAC-SHA256 under a per-user key), so a
  tampered entry, one signed with another key, one moved to another name or one of the old
  checksummed format is rebuilt, not loaded.
- The key: 0600, made once and atomically; one that others could read, or a symlink, is replaced.
"""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from cnngraph import CnnGraphWarning, kernel_cache
from test_files import ROOT, entries, needs_opencl, run_small


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CNNGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def entry(name: str = "k") -> Path:
    return kernel_cache.entry_path("t", name)


def written(payload: bytes = b"payload", name: str = "k") -> Path:
    path = entry(name)
    kernel_cache.write_entry(path, payload)
    assert kernel_cache.read_entry(path) == payload
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- the key and the folders it guards ------------------------------------------------------------

def test_folders_and_key_are_private_even_under_a_permissive_umask(cache):
    old = os.umask(0o002)
    try:
        written()
    finally:
        os.umask(old)
    assert mode(cache) == mode(cache / "t") == 0o700
    key = cache / kernel_cache.KEY_FILE
    assert mode(key) == 0o600 and key.stat().st_size == kernel_cache.KEY_SIZE
    assert sorted(p.name for p in cache.iterdir()) == ["key", "t"]  # no temporary file left


@pytest.mark.parametrize("folder", ["root", "kind"])
@pytest.mark.parametrize("permissions", [0o770, 0o707, 0o777])
def test_a_folder_others_may_write_is_not_used_with_one_note(cache, folder, permissions):
    path = written()
    target = cache if folder == "root" else path.parent
    target.chmod(permissions)
    with pytest.warns(CnnGraphWarning, match="the kernel cache is not used: others may write in it"):
        assert kernel_cache.read_entry(path) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # noted once per folder, not once per entry
        kernel_cache.write_entry(entry("other"), b"x")
        assert kernel_cache.read_entry(entry("other")) is None
    assert not entry("other").exists()


def test_a_folder_of_another_user_is_not_used(cache, monkeypatch):
    path = written()
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)  # the folder now belongs to someone else
    with pytest.warns(CnnGraphWarning, match=f"belongs to user id {me}, not to you"):
        assert kernel_cache.read_entry(path) is None
    kernel_cache.write_entry(entry("other"), b"x")
    assert not entry("other").exists()


@pytest.mark.parametrize("damage", ["readable_by_others", "symlink", "short", "folder"])
def test_a_key_that_is_not_private_is_replaced_and_its_entries_rebuilt(cache, tmp_path, damage):
    path = written()
    key = cache / kernel_cache.KEY_FILE
    planted = tmp_path / "planted_key"
    planted.write_bytes(b"k" * kernel_cache.KEY_SIZE)
    planted.chmod(0o600)
    key.unlink()
    if damage == "readable_by_others":
        key.write_bytes(b"k" * kernel_cache.KEY_SIZE)
        key.chmod(0o644)
    elif damage == "symlink":
        key.symlink_to(planted)
    elif damage == "short":
        key.write_bytes(b"k")
        key.chmod(0o600)
    else:
        key.mkdir()
    if damage == "folder":  # cannot be replaced by a file: the cache is not used
        assert kernel_cache.read_entry(path) is None
        return
    assert kernel_cache.read_entry(path) is None  # signed with the old key
    assert not key.is_symlink() and mode(key) == 0o600 and key.read_bytes() != b"k" * kernel_cache.KEY_SIZE
    assert planted.read_bytes() == b"k" * kernel_cache.KEY_SIZE  # what the symlink pointed to is untouched
    written()


# --- entries --------------------------------------------------------------------------------------

def forged(path: Path, key: bytes, payload: bytes, name: Path | None = None) -> bytes:
    """An entry for `path` as someone holding `key` would write it (signed as if at `name`)."""
    return kernel_cache.MAGIC + kernel_cache.entry_tag(key, name or path, payload) + payload


@pytest.mark.parametrize("forgery", ["other_key", "old_checksum_format", "moved_from_another_name",
                                     "tag_only_flipped", "payload_appended"])
def test_an_entry_not_signed_with_this_users_key_is_rebuilt(cache, forgery):
    path = written(b"genuine")
    blob = path.read_bytes()
    evil = b"\x7fELF attacker's binary"
    if forgery == "other_key":
        blob = forged(path, os.urandom(kernel_cache.KEY_SIZE), evil)
    elif forgery == "old_checksum_format":  # a checksum anyone can recompute
        blob = b"cnngraph-cache-1\n" + hashlib.sha256(evil).digest() + evil
    elif forgery == "moved_from_another_name":
        blob = written(evil, name="elsewhere").read_bytes()
    elif forgery == "tag_only_flipped":
        blob = blob[:len(kernel_cache.MAGIC)] + bytes([blob[len(kernel_cache.MAGIC)] ^ 1]) + blob[len(kernel_cache.MAGIC) + 1:]
    else:
        blob += evil
    path.write_bytes(blob)
    assert kernel_cache.read_entry(path) is None
    kernel_cache.write_entry(path, b"rebuilt")
    assert kernel_cache.read_entry(path) == b"rebuilt"


def read_in_a_child(path: Path, cache: Path) -> subprocess.CompletedProcess:
    """read_entry(path) in a child process with 1 GiB of address space at most, killed after 60 s."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from pathlib import Path; from cnngraph.kernel_cache import read_entry\n"
            "print(read_entry(Path(sys.argv[1])))")
    return subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "CNNGRAPH_CACHE_DIR": str(cache)})


@pytest.mark.parametrize("kind", ["fifo", "symlink_to_dev_zero", "symlink_to_a_valid_entry", "folder",
                                  "huge_sparse_file"])
def test_an_entry_that_is_not_a_small_regular_file_is_never_read(cache, kind):
    """A FIFO would block the open, /dev/zero never ends: the child must answer None at once."""
    path = written()
    valid = written(b"valid", name="valid")
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink_to_dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "symlink_to_a_valid_entry":
        path.symlink_to(valid)
    elif kind == "folder":
        path.mkdir()
    else:
        with open(path, "wb") as f:
            f.truncate(kernel_cache.MAX_ENTRY_BYTES + 1024)
    child = read_in_a_child(path, cache)
    assert child.returncode == 0 and child.stdout == "None\n", child.stderr
    if kind != "folder":
        kernel_cache.write_entry(path, b"rebuilt")  # replaced by a regular file, whatever was there
        assert not path.is_symlink() and kernel_cache.read_entry(path) == b"rebuilt"
    assert Path("/dev/zero").is_char_device()


def test_an_entry_over_the_size_bound_is_neither_read_nor_written(cache, monkeypatch):
    path = written(bytes(2000))
    monkeypatch.setattr(kernel_cache, "MAX_ENTRY_BYTES", 1000)
    assert kernel_cache.read_entry(path) is None
    kernel_cache.write_entry(entry("big"), bytes(1001))
    assert not entry("big").exists()


# --- through the OpenCL backend -------------------------------------------------------------------

@needs_opencl
def test_opencl_rebuilds_a_tampered_binary_instead_of_loading_it(cache, monkeypatch):
    want = run_small("opencl")
    (path,) = entries(cache)
    genuine = kernel_cache.read_entry(path)
    tampered = bytearray(genuine)
    tampered[len(tampered) // 2] ^= 0xFF
    # what someone without the key can do best: a well-formed entry with the old checksum of their binary
    path.write_bytes(b"cnngraph-cache-1\n" + hashlib.sha256(bytes(tampered)).digest() + bytes(tampered))
    import pyopencl as cl
    loaded_binaries = []
    real_program = cl.Program

    def spy(context, *args):
        if len(args) == 2:  # Program(context, devices, binaries)
            loaded_binaries.append(args[1][0])
        return real_program(context, *args)

    monkeypatch.setattr(cl, "Program", spy)
    np.testing.assert_array_equal(run_small("opencl"), want)
    assert loaded_binaries == []  # built from source, the tampered binary never handed to the driver
    assert kernel_cache.read_entry(path) is not None  # and a signed entry written over it
