"""Reductions: windowed pooling, and reductions along one axis of rows (global average pool, softmax,
layer norm)."""

from __future__ import annotations

from ...geometry import cdiv
from .common import THREADS, one_thread_each, ptr

WARPS = THREADS // 32  # per block of the one-warp-per-row kernels


def pool(name: str, *, kind: str, n, c, h, w, p, q, kh, kw, sh, sw, ph, pw, count_include_pad=True,
         channels_last: bool = False) -> tuple[str, tuple, tuple]:
    """max or avg pooling, one thread per output; windows clipped to the input as PyTorch does.
    `channels_last`: x and y are NHWC, consecutive threads pool consecutive channels of a pixel."""
    total = n * c * p * q
    at = f"xc[(iy * {w} + ix) * {c}]" if channels_last else f"xc[iy * {w} + ix]"
    if channels_last:  # idx = ((sample * P + oy) * Q + ox) * C + channel
        place = f"""const int y0 = ((idx / {c * q}) % {p}) * {sh} - {ph};
    const int x0 = ((idx / {c}) % {q}) * {sw} - {pw};
    GLOBAL const ACT* xc = x + (idx / {c * p * q}) * {h * w * c} + idx % {c};"""
    else:
        place = f"""const int y0 = ((idx / {q}) % {p}) * {sh} - {ph};
    const int x0 = (idx % {q}) * {sw} - {pw};
    GLOBAL const ACT* xc = x + (idx / {p * q}) * {h * w};"""
    if kind == "max":
        init, step, final = "NEG_INF", f"v = max_nan(v, LOAD({at}));", ""
    else:
        # window sizes as PyTorch counts them (integer min/max: both dialects have them built in)
        divisor = (f"(float)((min(y0 + {kh}, {h + ph}) - y0) * (min(x0 + {kw}, {w + pw}) - x0))"
                   if count_include_pad else
                   f"(float)((min(y0 + {kh}, {h}) - max(y0, 0)) * (min(x0 + {kw}, {w}) - max(x0, 0)))")
        init, step, final = "0.0f", f"v += LOAD({at});", f"v /= {divisor};"
    body = f"""KERNEL void {name}({ptr("x")}, {ptr("y", const=False)})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    {place}
    float v = {init};
    UNROLL for (int i = 0; i < {kh}; ++i) {{
        const int iy = y0 + i;
        if (iy >= 0 && iy < {h}) {{
            UNROLL for (int j = 0; j < {kw}; ++j) {{
                const int ix = x0 + j;
                if (ix >= 0 && ix < {w}) {step}
            }}
        }}
    }}
    {final}
    y[idx] = STORE(v);
}}
"""
    return (body, *one_thread_each(total))


def reduce_rows(name: str, *, kind: str, outer: int, length: int, inner: int) -> tuple[str, tuple, tuple]:
    """Per row of `length` values at stride `inner`: "mean" writes one value per row (global average
    pool), "softmax" writes the normalised row. One thread per row."""
    total = outer * inner
    head = f"""KERNEL void {name}({ptr("x")}, {ptr("y", const=False)})
{{
    const int row = BLOCK_X * {THREADS} + THREAD_X;
    if (row >= {total}) return;
    const int base = (row / {inner}) * {length * inner} + row % {inner};
"""
    if kind == "mean":
        code = f"""    float s = 0.0f;  /* each value scaled first: a float32 sum of large values would overflow */
    for (int i = 0; i < {length}; ++i) s += LOAD(x[base + i * {inner}]) * {1.0 / length!r}f;
    y[row] = STORE(s);
}}
"""
    else:
        code = f"""    float mx = NEG_INF;
    for (int i = 0; i < {length}; ++i) mx = max_nan(mx, LOAD(x[base + i * {inner}]));
    float s = 0.0f;
    for (int i = 0; i < {length}; ++i) s += EXPF(LOAD(x[base + i * {inner}]) - mx);
    const float inv = 1.0f / s;
    for (int i = 0; i < {length}; ++i) y[base + i * {inner}] = STORE(EXPF(LOAD(x[base + i * {inner}]) - mx) * inv);
}}
"""
    return (head + code, *one_thread_each(total))


def layer_norm(name: str, *, outer: int, length: int, inner: int, eps: float, affine: bool) -> tuple[str, tuple, tuple]:
    """Normalise each row of `length` values at stride `inner` (the channels of one pixel) to zero
    mean and unit variance, then scale and shift per position in the row. One thread per row; the
    variance from the deviations (two passes), as PyTorch computes it, of values shifted by the
    row's first one."""
    total = outer * inner
    args = [ptr("x"), *([ptr("weight", stored=False), ptr("bias", stored=False)] if affine else []), ptr("y", const=False)]
    scaled = "v * weight[i] + bias[i]" if affine else "v"
    body = f"""KERNEL void {name}({", ".join(args)})
{{
    const int row = BLOCK_X * {THREADS} + THREAD_X;
    if (row >= {total}) return;
    const int base = (row / {inner}) * {length * inner} + row % {inner};
    const float shift = LOAD(x[base]);  /* a large common offset cancels before the sums */
    float mean = 0.0f;            /* of the shifted values */
    for (int i = 0; i < {length}; ++i) mean += LOAD(x[base + i * {inner}]) - shift;
    mean *= {1.0 / length!r}f;
    float var = 0.0f;
    for (int i = 0; i < {length}; ++i) {{
        const float d = (LOAD(x[base + i * {inner}]) - shift) - mean;
        var += d * d;
    }}
    const float rstd = 1.0f / SQRTF(var * {1.0 / length!r}f + {float(eps)!r}f);
    for (int i = 0; i < {length}; ++i) {{
        const float v = ((LOAD(x[base + i * {inner}]) - shift) - mean) * rstd;
        y[base + i * {inner}] = STORE({scaled});
    }}
}}
"""
    return (body, *one_thread_each(total))


def layer_norm_warps(name: str, *, rows: int, length: int, eps: float, affine: bool) -> tuple[str, tuple, tuple]:
    """`layer_norm` of rows of `length` contiguous values (the channels of one NHWC pixel): a warp
    per row, its lanes reading consecutive values (coalesced loads), each sum completed by
    butterfly shuffles. Every lane reaches every shuffle: a warp past the last row normalises row
    0 and stores nothing."""
    affine_args = [ptr("weight", stored=False), ptr("bias", stored=False)] if affine else []
    args = [ptr("x"), *affine_args, ptr("y", const=False)]
    scaled = "v * weight[i] + bias[i]" if affine else "v"
    butterfly = "UNROLL for (int lanes = 16; lanes > 0; lanes /= 2) {0} += SHFL_XOR({0}, lanes);"
    body = f"""KERNEL void {name}({", ".join(args)})
{{
    WARP_SCRATCH({WARPS});
    const int lane = THREAD_X % 32;
    const int row = BLOCK_X * {WARPS} + THREAD_X / 32;
    const int base = (row < {rows} ? row : 0) * {length};
    const float shift = LOAD(x[base]);  /* a large common offset cancels before the sums */
    float mean = 0.0f;            /* of the shifted values */
    for (int i = lane; i < {length}; i += 32) mean += LOAD(x[base + i]) - shift;
    {butterfly.format("mean")}
    mean *= {1.0 / length!r}f;
    float var = 0.0f;
    for (int i = lane; i < {length}; i += 32) {{
        const float d = (LOAD(x[base + i]) - shift) - mean;
        var += d * d;
    }}
    {butterfly.format("var")}
    const float rstd = 1.0f / SQRTF(var * {1.0 / length!r}f + {float(eps)!r}f);
    if (row < {rows}) {{
        for (int i = lane; i < {length}; i += 32) {{
            const float v = ((LOAD(x[base + i]) - shift) - mean) * rstd;
            y[base + i] = STORE({scaled});
        }}
    }}
}}
"""
    return body, (cdiv(rows, WARPS), 1, 1), (THREADS, 1, 1)
