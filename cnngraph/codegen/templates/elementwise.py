"""Elementwise kernels: one thread per output element computing a C expression of its inputs."""

from __future__ import annotations

from .common import THREADS, indent, one_thread_each, ptr


def pointwise(name: str, *, total: int, inputs: list[str], extra_args: list[str], expr: str,
              channels: int, spatial: int, channels_last: bool = False) -> tuple[str, tuple, tuple]:
    """y[idx] = expr, one thread per element; `k` is the channel of idx (NCHW, or NHWC), for
    per-channel params. `expr` reads the stored `inputs` with LOAD; y may be one of them (an
    in-place node): no RESTRICT on them."""
    args = ", ".join([*(ptr(i, restrict=False) for i in inputs), *extra_args, ptr("y", const=False, restrict=False)])
    body = f"""KERNEL void {name}({args})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    const int k = {f"idx % {channels}" if channels_last else f"(idx / {spatial}) % {channels}"};
    float v;
{indent(expr, 4)}
    y[idx] = STORE(v);
}}
"""
    return (body, *one_thread_each(total))
