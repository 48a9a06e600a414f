"""What every template family shares: the block size of the one-thread-per-element kernels, the
pointer parameter declaration, indentation of generated code.

Templates read stored tensors through `LOAD(...)` and write them through `STORE(...)` (see
`STORAGE` in codegen/dialects.py); everything between is float32."""

from __future__ import annotations

from ...geometry import cdiv

THREADS = 256  # block size of the one-thread-per-output kernels
MAX_KERNEL_INPUTS = 64  # tensors one kernel reads: 64 pointers fit the smallest parameter space
# OpenCL allows (1 KiB) beside an epilogue's constants; CUDA's is 4 KiB (32 KiB from Volta, CUDA 12.1)


def ptr(name: str, const: bool = True, restrict: bool = True, stored: bool = True) -> str:
    """A kernel's pointer parameter: read-only and unaliased unless told otherwise; to `ACT`
    elements (a stored tensor, read with LOAD and written with STORE) unless `stored` is False
    (float32: the per-channel constants and the split-K workspace)."""
    return f"GLOBAL {'const ' if const else ''}{'ACT' if stored else 'float'}* {'RESTRICT ' if restrict else ''}{name}"


def one_thread_each(total: int) -> tuple[tuple, tuple]:
    """(grid, block) of a kernel with one thread per element of `total`."""
    return (cdiv(total, THREADS), 1, 1), (THREADS, 1, 1)


def indent(code: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else line for line in code.splitlines())


def kernel_groups(items: list, size: int = MAX_KERNEL_INPUTS) -> list[list]:
    """`items` in order, cut into groups of at most `size`: the inputs of a node that reads more
    tensors than one kernel may (an add or concat of thousands), one group per launch."""
    return [items[i:i + size] for i in range(0, len(items), size)]
