"""Kernels that only move data: channel concatenation and nearest-neighbour upsampling."""

from __future__ import annotations

from .common import THREADS, one_thread_each, ptr


def concat(name: str, *, n: int, channels: list[int], spatial: int) -> tuple[str, tuple, tuple]:
    """Channel concatenation of len(channels) inputs, one thread per output element."""
    ctot = sum(channels)
    total = n * ctot * spatial
    args = ", ".join([*(ptr(f"x{i}") for i in range(len(channels))), ptr("y", const=False)])
    lines, start = [], 0
    for i, ch in enumerate(channels):
        cond = "if" if i == 0 else "else if"
        lines.append(f"    {cond} (k < {start + ch}) v = x{i}[(nb * {ch} + k - {start}) * {spatial} + pix];")
        start += ch
    body = f"""KERNEL void {name}({args})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    const int pix = idx % {spatial};
    const int k = (idx / {spatial}) % {ctot};
    const int nb = idx / {ctot * spatial};
    float v = 0.0f;
{chr(10).join(lines)}
    y[idx] = v;
}}
"""
    return (body, *one_thread_each(total))


def upsample_nearest(name: str, *, n, c, h, w, sh, sw) -> tuple[str, tuple, tuple]:
    total = n * c * h * sh * w * sw
    body = f"""KERNEL void {name}({ptr("x")}, {ptr("y", const=False)})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    const int ox = idx % {w * sw};
    const int oy = (idx / {w * sw}) % {h * sh};
    const int plane = idx / {h * sh * w * sw};
    y[idx] = x[plane * {h * w} + (oy / {sh}) * {w} + ox / {sw}];
}}
"""
    return (body, *one_thread_each(total))
