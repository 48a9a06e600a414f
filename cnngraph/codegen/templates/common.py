"""What every template family shares: the block size of the one-thread-per-element kernels, the
pointer parameter declaration, indentation of generated code."""

from __future__ import annotations

from ...geometry import cdiv

THREADS = 256  # block size of the one-thread-per-output kernels


def ptr(name: str, const: bool = True, restrict: bool = True) -> str:
    """A kernel's float pointer parameter: read-only and unaliased unless told otherwise."""
    return f"GLOBAL {'const ' if const else ''}float* {'RESTRICT ' if restrict else ''}{name}"


def one_thread_each(total: int) -> tuple[tuple, tuple]:
    """(grid, block) of a kernel with one thread per element of `total`."""
    return (cdiv(total, THREADS), 1, 1), (THREADS, 1, 1)


def indent(code: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else line for line in code.splitlines())
