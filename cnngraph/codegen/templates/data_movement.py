"""Kernels that only move data: channel concatenation and nearest-neighbour upsampling."""

from __future__ import annotations

from .common import THREADS, one_thread_each, ptr


def concat(name: str, *, n: int, channels: list[int], spatial: int, first: int = 0,
           out_channels: int | None = None, channels_last: bool = False) -> tuple[str, tuple, tuple]:
    """Channel concatenation of len(channels) inputs into channels first.. of y (of `out_channels`,
    by default just theirs), one thread per element written. Many inputs take several launches
    (a kernel's parameters are bounded), each writing its own range of channels. `channels_last`:
    every tensor is NHWC (consecutive threads: consecutive channels of a pixel)."""
    ctot = sum(channels)
    out_channels = ctot if out_channels is None else out_channels
    total = n * ctot * spatial
    args = ", ".join([*(ptr(f"x{i}") for i in range(len(channels))), ptr("y", const=False)])
    lines, start = [], 0
    for i, ch in enumerate(channels):
        cond = "if" if i == 0 else "else if"
        read = f"(nb * {spatial} + pix) * {ch} + k - {start}" if channels_last else \
            f"(nb * {ch} + k - {start}) * {spatial} + pix"
        lines.append(f"    {cond} (k < {start + ch}) v = LOAD(x{i}[{read}]);")
        start += ch
    if out_channels == ctot:
        write = "idx"
    else:
        write = (f"(nb * {spatial} + pix) * {out_channels} + {first} + k" if channels_last
                 else f"(nb * {out_channels} + {first} + k) * {spatial} + pix")
    body = f"""KERNEL void {name}({args})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
{_place(ctot, spatial, channels_last)}
    float v = 0.0f;
{chr(10).join(lines)}
    y[{write}] = STORE(v);
}}
"""
    return (body, *one_thread_each(total))


def _place(c: int, spatial: int, channels_last: bool) -> str:
    """The pixel `pix`, channel `k` and sample `nb` of element `idx` of an (N, C, spatial) tensor,
    stored NCHW or NHWC."""
    if channels_last:
        return f"""    const int k = idx % {c};
    const int pix = (idx / {c}) % {spatial};
    const int nb = idx / {c * spatial};"""
    return f"""    const int pix = idx % {spatial};
    const int k = (idx / {spatial}) % {c};
    const int nb = idx / {c * spatial};"""


def upsample_nearest(name: str, *, n, c, h, w, sh, sw, channels_last: bool = False) -> tuple[str, tuple, tuple]:
    """Nearest upsampling by whole factors: output pixel (oy, ox) copies (oy / sh, ox / sw).
    `channels_last`: x and y are NHWC, consecutive threads copy consecutive channels of a pixel."""
    total = n * c * h * sh * w * sw
    if channels_last:
        place = f"""const int ox = (idx / {c}) % {w * sw};
    const int oy = (idx / {c * w * sw}) % {h * sh};
    const int nb = idx / {c * h * sh * w * sw};
    y[idx] = x[((nb * {h} + oy / {sh}) * {w} + ox / {sw}) * {c} + idx % {c}];"""
    else:
        place = f"""const int ox = idx % {w * sw};
    const int oy = (idx / {w * sw}) % {h * sh};
    const int plane = idx / {h * sh * w * sw};
    y[idx] = x[plane * {h * w} + (oy / {sh}) * {w} + ox / {sw}];"""
    body = f"""KERNEL void {name}({ptr("x")}, {ptr("y", const=False)})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    {place}
}}
"""
    return (body, *one_thread_each(total))


def channel_gather(name: str, *, n: int, c_in: int, c_out: int, spatial: int, source: str,
                   channels_last: bool = False) -> tuple[str, tuple, tuple]:
    """y[nb, k, pix] = x[nb, source(k), pix], one thread per output element: a channel slice
    (source = k + start) or a channel shuffle (a permutation of the channels). `channels_last`:
    x and y are NHWC."""
    total = n * c_out * spatial
    read = (f"(nb * {spatial} + pix) * {c_in} + ({source})" if channels_last
            else f"(nb * {c_in} + ({source})) * {spatial} + pix")
    body = f"""KERNEL void {name}({ptr("x")}, {ptr("y", const=False)})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
{_place(c_out, spatial, channels_last)}
    y[idx] = x[{read}];
}}
"""
    return (body, *one_thread_each(total))


def pad2d(name: str, *, planes: int, h: int, w: int, top: int, left: int, p: int, q: int, mode: str,
          value: float) -> tuple[str, tuple, tuple]:
    """Padding of each (h, w) plane to (p, q), `top` rows and `left` columns before it: with a
    constant, by reflection about the edge (excluding it), or by replicating the edge."""
    total = planes * p * q
    if mode == "constant":
        read = (f"(iy >= 0 && iy < {h} && ix >= 0 && ix < {w}) ? LOAD(xc[iy * {w} + ix]) : {float(value)!r}f")
    else:
        fold = {"reflect": ("iy = iy < 0 ? -iy : iy; iy = iy >= {h} ? 2 * {h} - 2 - iy : iy;"
                            "ix = ix < 0 ? -ix : ix; ix = ix >= {w} ? 2 * {w} - 2 - ix : ix;"),
                "replicate": "iy = min(max(iy, 0), {h} - 1); ix = min(max(ix, 0), {w} - 1);"}[mode]
        read = f"LOAD(xc[iy * {w} + ix])"
    remap = "" if mode == "constant" else "\n    " + fold.format(h=h, w=w)
    body = f"""KERNEL void {name}({ptr("x")}, {ptr("y", const=False)})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    int iy = (idx / {q}) % {p} - {top};
    int ix = idx % {q} - {left};
    GLOBAL const ACT* xc = x + (idx / {p * q}) * {h * w};{remap}
    y[idx] = STORE({read});
}}
"""
    return (body, *one_thread_each(total))


def resample(name: str, *, n: int, c: int, h: int, w: int, p: int, q: int, mode: str,
             channels_last: bool = False) -> tuple[str, tuple, tuple]:
    """Resize each (h, w) plane to (p, q) from per-axis tables: `rows` holds (y0, y1, weight of y1)
    for each output row, `cols` the same for each column. "nearest" reads (y0, x0); "bilinear" blends
    the four neighbours as PyTorch does. The tables are computed once, on the host, by the op.
    `channels_last`: x and y are NHWC, consecutive threads resample consecutive channels of a pixel."""
    total = n * c * p * q
    def at(y: str, x: str) -> str:
        return f"LOAD(xc[({y} * {w} + {x}) * {c}])" if channels_last else f"LOAD(xc[{y} * {w} + {x}])"

    if mode == "nearest":
        value = at("y0", "x0")
    else:
        value = (f"(1.0f - ly) * ((1.0f - lx) * {at('y0', 'x0')} + lx * {at('y0', 'x1')})"
                 f" + ly * ((1.0f - lx) * {at('y1', 'x0')} + lx * {at('y1', 'x1')})")
    if channels_last:
        place = f"""const int ox = (idx / {c}) % {q};
    const int oy = (idx / {c * q}) % {p};
    GLOBAL const ACT* xc = x + (idx / {c * p * q}) * {h * w * c} + idx % {c};"""
    else:
        place = f"""const int ox = idx % {q};
    const int oy = (idx / {q}) % {p};
    GLOBAL const ACT* xc = x + (idx / {p * q}) * {h * w};"""
    body = f"""KERNEL void {name}({ptr("x")}, {ptr("rows", stored=False)}, {ptr("cols", stored=False)}, {ptr("y", const=False)})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    {place}
    const int y0 = (int)rows[3 * oy], y1 = (int)rows[3 * oy + 1];
    const int x0 = (int)cols[3 * ox], x1 = (int)cols[3 * ox + 1];
    const float ly = rows[3 * oy + 2], lx = cols[3 * ox + 2];
    y[idx] = STORE({value});
}}
"""
    return (body, *one_thread_each(total))
