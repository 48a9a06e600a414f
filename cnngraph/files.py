"""Writing files so that a crash or an error never leaves a half-written one behind: everything is
written under a temporary name beside its destination and renamed into place. A destination that
cannot be written (no folder, no permission, disk full) is a CnnGraphError naming it."""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import CnnGraphError


@contextmanager
def _reported(path: Path):
    """OSError as one line that names the destination."""
    try:
        yield
    except OSError as err:
        raise CnnGraphError(f"cannot write: {err.strerror or err}", file=str(path)) from None


def given_path(value: object, expected: str, error: type[CnnGraphError] = CnnGraphError) -> Path:
    """`value`, a path a caller passed, as a Path. Anything else (None, a number, bytes, a path with a
    NUL character) is `error`: "<expected>, got <what>", not the TypeError or ValueError of `open`."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise error(f"{expected}, got {type(value).__name__}")
    if "\0" in value:  # no file name can hold one; the OS would refuse it with a ValueError
        raise error(f"{expected}, got a path with a NUL character", file=value)
    return Path(value)


def refuse_overwriting(output: str | Path, *inputs: str | Path | None) -> None:
    """Refuse, before any work, an output that is one of the command's inputs: the same path, or the
    same file by another name (a hard link, a symlink). A folder output must not hold an input either,
    since it is replaced whole."""
    out = Path(output)
    for given in filter(None, inputs):
        source = Path(given)
        inside = out.is_dir() and source.resolve().is_relative_to(out.resolve())
        if inside or _same_file(out, source):
            raise CnnGraphError(f"would overwrite the input {given}{' (it is inside)' if inside else ''}; "
                                f"write to another {'folder' if inside else 'file'}", file=str(output))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # by device and inode: hard links and symlinks included
    except OSError:  # one of them does not exist (yet): the same file only by name
        return a.resolve() == b.resolve()


def require_folder(path: str | Path) -> None:
    """Refuse, before any work, a destination whose folder does not exist."""
    if not Path(path).parent.is_dir():
        raise CnnGraphError(f"cannot write: no folder {Path(path).parent}", file=str(path))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temporary file beside `path`, then rename it into place."""
    path = given_path(path, "the file to write must be a path")
    with _reported(path):
        tmp = _temporary_name(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to any new file
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def atomic_write_folder(target: str | Path, files: dict[str, str]) -> None:
    """Write `files` (name -> text) into a temporary folder beside `target`, then rename it into
    place. An existing `target` is moved aside first and removed only once the new one is in place."""
    target = Path(target)
    aside = None
    with _reported(target):
        tmp = _temporary_name(target)
        os.mkdir(tmp)
        try:
            for name, text in files.items():
                (tmp / name).write_text(text)
            if target.exists() or target.is_symlink():
                aside = _temporary_name(target, ".old")
                os.replace(target, aside)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if aside is not None and not target.exists():
                os.replace(aside, target)  # put the old folder back
            raise
    if aside is not None and aside.is_symlink():  # the link itself replaced, never what it points to
        aside.unlink()
    elif aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _temporary_name(path: Path, suffix: str = ".tmp") -> Path:
    """A hidden name beside `path` that no other writer uses."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
