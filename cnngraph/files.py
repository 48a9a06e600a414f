"""Writing files so that a crash or an error never leaves a half-written one behind: everything is
written under a temporary name beside its destination and renamed into place. A destination that
cannot be written (no folder, no permission, disk full) is a CnnGraphError naming it."""

from __future__ import annotations

import os
import shutil
import tempfile
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


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    with _reported(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; give it an ordinary file's mode
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def atomic_write_folder(target: str | Path, files: dict[str, str]) -> None:
    """Write `files` (name -> text) into a temporary folder beside `target`, then rename it into
    place. An existing `target` is moved aside first and removed only once the new one is in place."""
    target = Path(target)
    aside = target.with_name(f".{target.name}.old")
    with _reported(target):
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        try:
            for name, text in files.items():
                (tmp / name).write_text(text)
            tmp.chmod(0o777 & ~_umask())
            if target.exists():
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(target, aside)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if aside.exists() and not target.exists():
                os.replace(aside, target)  # put the old folder back
            raise
    shutil.rmtree(aside, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
