"""Kernel templates in the neutral C subset of `dialects.py`, specialised per compiled shape: every
size, stride and loop bound is a literal, so the compiler folds index arithmetic and unrolls.

Tensors are NCHW float32. Each template returns (body, grid, block); `epilogue` is a C snippet
that turns the accumulated value `v` of output element `idx` (channel `k`) into the stored one:
bias, residual adds, activations, per-channel scale + shift (unfolded batch norms), all applied
in registers before the single store.
"""

from __future__ import annotations

from dataclasses import dataclass

THREADS = 256  # block size of the one-thread-per-output kernels


@dataclass(frozen=True)
class Tile:
    """Implicit-GEMM tiling: a block computes BM output pixels x BN output channels, reducing BK
    at a time through shared memory; each thread holds a TM x TN register block. Its rows are
    interleaved across threads (consecutive threads, consecutive pixels: coalesced stores), or
    `grouped` in runs of 4 (each run one 16-byte shared-memory read instead of four)."""
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    grouped: bool = False

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)


TILES = {"large": Tile(128, 128, 8, 8, 8), "wide": Tile(128, 64, 8, 8, 8), "small": Tile(64, 64, 8, 4, 8),
         "narrow": Tile(64, 32, 8, 4, 4)}
DEEP_TILES = {"large16": Tile(128, 128, 16, 8, 8), "wide16": Tile(128, 64, 16, 8, 8),  # autotuning candidates
              "large_grouped": Tile(128, 128, 8, 8, 8, grouped=True), "wide_grouped": Tile(128, 64, 8, 8, 8, grouped=True)}


@dataclass(frozen=True)
class Schedule:
    """How one conv/linear GEMM runs: its tile, and how many slices its reduction is split into."""
    tile: Tile
    splits: int = 1
    chunk: int = 0  # reduction values per split (a multiple of the tile's BK)


def schedules(m: int, k: int, r: int, groups: int, rows_multiple: int = 1) -> list[Schedule]:
    """The default schedule first (a heuristic, good without measuring), then the few alternatives
    an autotuner may time on the device: other tiles, a deeper BK, half or twice the splits."""
    def make(tile: Tile, splits: int | None = None) -> Schedule:
        if rows_multiple != 1 or groups != 1:  # fused pools and grouped convs do not split
            return Schedule(tile)
        return _split(tile, r, default_splits(m, k, r, tile) if splits is None else splits)

    found = [make(choose_tile(m, k, rows_multiple))]
    alternatives = [make(t) for t in (TILES["large"], TILES["wide"], *DEEP_TILES.values(), TILES["small"])
                    if t.tm % rows_multiple == 0 and t.bn <= 2 * k]
    if found[0].splits > 1:
        alternatives += [make(found[0].tile, s) for s in (1, found[0].splits // 2, 2 * found[0].splits)
                         if r // s >= 2 * found[0].tile.bk]
    for candidate in alternatives:
        if candidate not in found:
            found.append(candidate)
    return found


def _split(tile: Tile, r: int, splits: int) -> Schedule:
    """The reduction of r values in at most `splits` slices, each a whole number of BK steps."""
    chunk = _cdiv(_cdiv(r, splits), tile.bk) * tile.bk
    return Schedule(tile, _cdiv(r, chunk), chunk) if _cdiv(r, chunk) > 1 else Schedule(tile)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def choose_tile(m: int, k: int, rows_multiple: int = 1) -> Tile:
    """Largest tile that still gives enough blocks to fill the GPU (about 2 per SM on 132 SMs);
    `rows_multiple`: a thread's rows must hold whole pooling windows."""
    fits = [name for name, t in TILES.items() if t.tm % rows_multiple == 0]
    for name in ("large", "wide", "small"):
        t = TILES[name]
        if name in fits and k >= t.bn and -(-m // t.bm) * -(-k // t.bn) >= 264:
            return t
    for name in ("narrow", "small", "wide") if k <= 32 else ("small", "wide", "narrow"):
        if name in fits:
            return TILES[name]
    raise ValueError(f"no tile holds windows of {rows_multiple} rows")


def _ptr(name: str, const: bool = True, restrict: bool = True) -> str:
    return f"GLOBAL {'const ' if const else ''}float* {'RESTRICT ' if restrict else ''}{name}"


def default_splits(m: int, k: int, r: int, tile: Tile) -> int:
    """Split the reduction when the output alone gives too few blocks to fill the GPU (batch 1,
    late layers): aim at about 2 blocks per SM on 132 SMs, each slice at least 128 values."""
    blocks = _cdiv(m, tile.bm) * _cdiv(k, tile.bn)
    return 1 if blocks >= 132 or r < 256 else min(16, _cdiv(264, blocks), r // 128)


@dataclass(frozen=True)
class FusedPool:
    """A non-overlapping pool (stride == kernel, no padding) applied to the conv output in the
    epilogue: GEMM rows are ordered so each pooling window is `size` consecutive rows of one thread."""
    kind: str  # "max" or "avg"
    kh: int
    kw: int
    ph: int    # pooled output height and width
    pw: int

    @property
    def size(self) -> int:
        return self.kh * self.kw


def conv_gemm(name: str, *, n, c, h, w, k, p, q, kh, kw, sh, sw, pt, pl, dh, dw, groups, extra_args: list[str],
              epilogue: str, tile: Tile, splits: int = 1, chunk: int = 0,
              pool: FusedPool | None = None) -> tuple[str, tuple, tuple]:
    """Implicit-GEMM convolution (also linear: h = w = kh = kw = 1). GEMM M = N*P*Q output pixels,
    N = K/groups output channels, reduction R = C/groups*KH*KW; the group is blockIdx.z.
    x (N, C, H, W), w (groups, R, K/groups), y (N, K, P, Q).
    Global loads of the next BK slice go to registers while the current slice is multiplied.
    With splits > 1 (groups == 1), blockIdx.z is the split: the kernel writes raw partial sums to
    ws (splits, K, M) and `split_reduce` adds them and applies the epilogue.
    With `pool`, only the conv pixels inside pooling windows are computed, a thread owns whole
    windows, and it stores the pooled value: y is then (N, K, PH, PW)."""
    cg, kg = c // groups, k // groups
    r_total, pq, khw = cg * kh * kw, p * q, kh * kw
    m_total = n * pool.ph * pool.pw * pool.size if pool else n * pq
    t = tile
    nt, a_per, a_step, b_per = t.threads, t.bm * t.bk // t.threads, t.threads // t.bm, t.bk * t.bn // t.threads
    assert nt % t.bm == 0 and (t.bk * t.bn) % nt == 0
    assert not pool or (t.tm % pool.size == 0 and splits == 1)
    split = splits > 1
    r_begin = f"g * {chunk}" if split else "0"
    rows_per = t.bm // t.tm
    # a thread's i-th row: interleaved (coalesced stores), or contiguous when it must own whole windows
    if pool:
        row = f"ty * {t.tm} + i"
    elif t.grouped:  # runs of 4 rows, the runs BM/2 apart (TM = 8) so a warp still covers 64 pixels
        row = f"(i / 4) * {t.bm // 2} + ty * 4 + i % 4" if t.tm == 8 else "ty * 4 + i"
        assert t.tm in (4, 8)
    else:
        row = f"ty + i * {rows_per}"
    if pool:
        cells = pool.ph * pool.pw
        decode = f"""const int a_n = am / {cells * pool.size};
    const int a_cell = (am / {pool.size}) % {cells};  /* pooled pixel */
    const int a_win = am % {pool.size};                /* position inside its window */
    const int a_p = (a_cell / {pool.pw}) * {pool.kh} + a_win / {pool.kw};
    const int a_q = (a_cell % {pool.pw}) * {pool.kw} + a_win % {pool.kw};"""
    else:
        decode = f"""const int a_n = am / {pq};
    const int a_p = (am % {pq}) / {q};
    const int a_q = am % {q};"""
    if split:
        assert groups == 1
        args = ", ".join([_ptr("x"), _ptr("w"), _ptr("ws", const=False)])
        finish = _plain_epilogue(t, row, m_total, pq, kg, "kl", "", f"ws[(g * {k} + k) * {m_total} + m] = v;")
    elif pool:
        args = ", ".join([_ptr("x"), _ptr("w"), *extra_args, _ptr("y", const=False)])
        finish = _pool_epilogue(t, pool, m_total, p, q, k, kg, epilogue)
    else:
        args = ", ".join([_ptr("x"), _ptr("w"), *extra_args, _ptr("y", const=False)])
        finish = _plain_epilogue(t, row, m_total, pq, kg, f"g * {kg} + kl", epilogue, "y[idx] = v;", k)
    body = f"""KERNEL void {name}({args})
{{
    SHARED float As[{t.bk}][{t.bm}] ALIGNED16;
    SHARED float Bs[{t.bk}][{t.bn}] ALIGNED16;
    const int tid = THREAD_X;
    const int g = BLOCK_Z;
    const int m0 = BLOCK_X * {t.bm};
    const int n0 = BLOCK_Y * {t.bn};
    const int ty = tid % {rows_per};  /* row i of this thread: m0 + {row} */
    const int tx = tid / {rows_per};  /* columns n0 + tx*{t.tn} + j */
    /* the output pixel whose input window this thread loads stays the same for the whole reduction */
    const int am = m0 + tid % {t.bm};
    {decode}
    const int ih0 = a_p * {sh} - {pt};
    const int iw0 = a_q * {sw} - {pl};
    GLOBAL const float* xg = x + (a_n * {c} + {"0" if split else "g"} * {cg}) * {h * w};
    GLOBAL const float* wg = w + {"0" if split else "g"} * {r_total * kg};
    const int r_end = {f"min({r_begin} + {chunk}, {r_total})" if split else r_total};
    float acc[{t.tm}][{t.tn}];
    float a_reg[{a_per}];
    float b_reg[{b_per}];
    UNROLL for (int i = 0; i < {t.tm}; ++i)
        UNROLL for (int j = 0; j < {t.tn}; ++j) acc[i][j] = 0.0f;

    for (int k0 = {r_begin}; k0 < r_end; k0 += {t.bk}) {{
        if (k0 == {r_begin}) {{
{_load_tiles("k0", t, a_per, a_step, b_per, m_total, "r_end", khw, kw, h, w, dh, dw, kg, indent=12)}
        }}
        UNROLL for (int i = 0; i < {a_per}; ++i) As[tid / {t.bm} + i * {a_step}][tid % {t.bm}] = a_reg[i];
        UNROLL for (int i = 0; i < {b_per}; ++i) Bs[(tid + i * {nt}) / {t.bn}][(tid + i * {nt}) % {t.bn}] = b_reg[i];
        BARRIER();
        if (k0 + {t.bk} < r_end) {{  /* prefetch the next slice while this one is multiplied */
{_load_tiles(f"k0 + {t.bk}", t, a_per, a_step, b_per, m_total, "r_end", khw, kw, h, w, dh, dw, kg, indent=12)}
        }}
        UNROLL for (int kk = 0; kk < {t.bk}; ++kk) {{
            float a[{t.tm}];
            float b[{t.tn}];
            UNROLL for (int i = 0; i < {t.tm}; ++i) a[i] = As[kk][{row}];
            UNROLL for (int j = 0; j < {t.tn}; ++j) b[j] = Bs[kk][tx * {t.tn} + j];
            UNROLL for (int i = 0; i < {t.tm}; ++i)
                UNROLL for (int j = 0; j < {t.tn}; ++j) acc[i][j] += a[i] * b[j];
        }}
        BARRIER();
    }}

{finish}
}}
"""
    grid = (-(-m_total // t.bm), -(-kg // t.bn), splits if split else groups)
    return body, grid, (nt, 1, 1)


def _plain_epilogue(t: Tile, row: str, m_total, pq, kg, channel: str, epilogue: str, store: str, k=None) -> str:
    """Each accumulator: epilogue in registers, then one store (to y, or raw to the split workspace)."""
    return f"""    UNROLL for (int i = 0; i < {t.tm}; ++i) {{
        const int m = m0 + {row};
        if (m < {m_total}) {{
            const int nb = m / {pq};
            const int pix = m - nb * {pq};
            UNROLL for (int j = 0; j < {t.tn}; ++j) {{
                const int kl = n0 + tx * {t.tn} + j;
                if (kl < {kg}) {{
                    const int k = {channel};
                    const int idx = (nb * {k if k is not None else kg} + k) * {pq} + pix;
                    float v = acc[i][j];
{_indent(epilogue, 20)}
                    {store}
                }}
            }}
        }}
    }}"""


def _pool_epilogue(t: Tile, pool: FusedPool, m_total, p, q, k, kg, epilogue: str) -> str:
    """Per window of `pool.size` consecutive rows: epilogue on each conv value, then max or mean,
    and one store of the pooled value. `idx` is the conv output element (for residual epilogues)."""
    cells = pool.ph * pool.pw
    combine = "r = max_nan(r, v);" if pool.kind == "max" else "r += v;"
    first = "NEG_INF" if pool.kind == "max" else "0.0f"
    scale = "" if pool.kind == "max" else f"\n                    r *= {1.0 / pool.size!r}f;"
    return f"""    UNROLL for (int wi = 0; wi < {t.tm // pool.size}; ++wi) {{
        const int m = m0 + ty * {t.tm} + wi * {pool.size};  /* first row of a whole window */
        if (m < {m_total}) {{
            const int nb = m / {cells * pool.size};
            const int cell = (m / {pool.size}) % {cells};
            UNROLL for (int j = 0; j < {t.tn}; ++j) {{
                const int kl = n0 + tx * {t.tn} + j;
                if (kl < {kg}) {{
                    const int k = g * {kg} + kl;
                    float r = {first};
                    UNROLL for (int e = 0; e < {pool.size}; ++e) {{
                        const int idx = ((nb * {k} + k) * {p} + (cell / {pool.pw}) * {pool.kh} + e / {pool.kw}) * {q}
                                        + (cell % {pool.pw}) * {pool.kw} + e % {pool.kw};
                        float v = acc[wi * {pool.size} + e][j];
{_indent(epilogue, 24)}
                        {combine}
                    }}{scale}
                    y[(nb * {k} + k) * {cells} + cell] = r;
                }}
            }}
        }}
    }}"""


def split_reduce(name: str, *, n, k, pq, splits, extra_args: list[str], epilogue: str) -> tuple[str, tuple, tuple]:
    """y (N, K, P*Q) = sum of the split-K partials ws (splits, K, N*P*Q), then the epilogue."""
    m_total = n * pq
    expr = f"""const int m = (idx / {k * pq}) * {pq} + idx % {pq};
v = 0.0f;
UNROLL for (int s = 0; s < {splits}; ++s) v += ws[(s * {k} + k) * {m_total} + m];
{epilogue}"""
    return pointwise(name, total=n * k * pq, inputs=["ws"], extra_args=extra_args, expr=expr, channels=k, spatial=pq)


def _load_tiles(kbase, t: Tile, a_per, a_step, b_per, m_total, r_total, khw, kw, h, w, dh, dw, kg, indent) -> str:
    """Registers a_reg/b_reg <- the input-window slice and weight slice starting at reduction index kbase."""
    code = f"""UNROLL for (int i = 0; i < {a_per}; ++i) {{
    const int r = {kbase} + tid / {t.bm} + i * {a_step};
    float v = 0.0f;
    if (am < {m_total} && r < {r_total}) {{
        const int ci = r / {khw};
        const int rs = r - ci * {khw};
        const int ih = ih0 + (rs / {kw}) * {dh};
        const int iw = iw0 + (rs % {kw}) * {dw};
        if (ih >= 0 && ih < {h} && iw >= 0 && iw < {w}) v = xg[(ci * {h} + ih) * {w} + iw];
    }}
    a_reg[i] = v;
}}
UNROLL for (int i = 0; i < {b_per}; ++i) {{
    const int e = tid + i * {t.threads};
    const int r = {kbase} + e / {t.bn};
    const int kl = n0 + e % {t.bn};
    b_reg[i] = (r < {r_total} && kl < {kg}) ? wg[r * {kg} + kl] : 0.0f;
}}"""
    return _indent(code, indent)


def depthwise(name: str, *, n, c, h, w, p, q, kh, kw, sh, sw, pt, pl, dh, dw, extra_args: list[str],
              epilogue: str) -> tuple[str, tuple, tuple]:
    """Depthwise convolution, one thread per output element; w (C, KH*KW)."""
    total = n * c * p * q
    args = ", ".join([_ptr("x"), _ptr("w"), *extra_args, _ptr("y", const=False)])
    body = f"""KERNEL void {name}({args})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    const int ox = idx % {q};
    const int oy = (idx / {q}) % {p};
    const int k = (idx / {p * q}) % {c};
    GLOBAL const float* xc = x + (idx / {p * q}) * {h * w};
    GLOBAL const float* wc = w + k * {kh * kw};
    float v = 0.0f;
    UNROLL for (int i = 0; i < {kh}; ++i) {{
        const int iy = oy * {sh} - {pt} + i * {dh};
        if (iy >= 0 && iy < {h}) {{
            UNROLL for (int j = 0; j < {kw}; ++j) {{
                const int ix = ox * {sw} - {pl} + j * {dw};
                if (ix >= 0 && ix < {w}) v += xc[iy * {w} + ix] * wc[i * {kw} + j];
            }}
        }}
    }}
{_indent(epilogue, 4)}
    y[idx] = v;
}}
"""
    return body, (-(-total // THREADS), 1, 1), (THREADS, 1, 1)


def pointwise(name: str, *, total: int, inputs: list[str], extra_args: list[str], expr: str,
              channels: int = 1, spatial: int = 1) -> tuple[str, tuple, tuple]:
    """y[idx] = expr, one thread per element; `k` is the channel of idx, for per-channel params.
    y may be one of the inputs (an in-place node): no RESTRICT on them."""
    args = ", ".join([*(_ptr(i, restrict=False) for i in inputs), *extra_args, _ptr("y", const=False, restrict=False)])
    body = f"""KERNEL void {name}({args})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    const int k = (idx / {spatial}) % {channels};
    float v;
{_indent(expr, 4)}
    y[idx] = v;
}}
"""
    return body, (-(-total // THREADS), 1, 1), (THREADS, 1, 1)


def pool(name: str, *, kind: str, n, c, h, w, p, q, kh, kw, sh, sw, ph, pw, count_include_pad=True
         ) -> tuple[str, tuple, tuple]:
    """max or avg pooling, one thread per output; windows clipped to the input as PyTorch does."""
    total = n * c * p * q
    if kind == "max":
        init, step, final = "NEG_INF", "v = max_nan(v, xc[iy * %d + ix]);" % w, ""
    else:
        # window sizes as PyTorch counts them (integer min/max: both dialects have them built in)
        divisor = (f"(float)((min(y0 + {kh}, {h + ph}) - y0) * (min(x0 + {kw}, {w + pw}) - x0))"
                   if count_include_pad else
                   f"(float)((min(y0 + {kh}, {h}) - max(y0, 0)) * (min(x0 + {kw}, {w}) - max(x0, 0)))")
        init, step, final = "0.0f", "v += xc[iy * %d + ix];" % w, f"v /= {divisor};"
    body = f"""KERNEL void {name}({_ptr("x")}, {_ptr("y", const=False)})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    const int y0 = ((idx / {q}) % {p}) * {sh} - {ph};
    const int x0 = (idx % {q}) * {sw} - {pw};
    GLOBAL const float* xc = x + (idx / {p * q}) * {h * w};
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
    y[idx] = v;
}}
"""
    return body, (-(-total // THREADS), 1, 1), (THREADS, 1, 1)


def reduce_rows(name: str, *, kind: str, outer: int, length: int, inner: int) -> tuple[str, tuple, tuple]:
    """Per row of `length` values at stride `inner`: "mean" writes one value per row (global average
    pool), "softmax" writes the normalised row. One thread per row."""
    total = outer * inner
    head = f"""KERNEL void {name}({_ptr("x")}, {_ptr("y", const=False)})
{{
    const int row = BLOCK_X * {THREADS} + THREAD_X;
    if (row >= {total}) return;
    const int base = (row / {inner}) * {length * inner} + row % {inner};
"""
    if kind == "mean":
        code = f"""    float s = 0.0f;
    for (int i = 0; i < {length}; ++i) s += x[base + i * {inner}];
    y[row] = s * {1.0 / length!r}f;
}}
"""
    else:
        code = f"""    float mx = NEG_INF;
    for (int i = 0; i < {length}; ++i) mx = max_nan(mx, x[base + i * {inner}]);
    float s = 0.0f;
    for (int i = 0; i < {length}; ++i) s += EXPF(x[base + i * {inner}] - mx);
    const float inv = 1.0f / s;
    for (int i = 0; i < {length}; ++i) y[base + i * {inner}] = EXPF(x[base + i * {inner}] - mx) * inv;
}}
"""
    return head + code, (-(-total // THREADS), 1, 1), (THREADS, 1, 1)


def concat(name: str, *, n: int, channels: list[int], spatial: int) -> tuple[str, tuple, tuple]:
    """Channel concatenation of len(channels) inputs, one thread per output element."""
    ctot = sum(channels)
    total = n * ctot * spatial
    args = ", ".join([*(_ptr(f"x{i}") for i in range(len(channels))), _ptr("y", const=False)])
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
    return body, (-(-total // THREADS), 1, 1), (THREADS, 1, 1)


def upsample_nearest(name: str, *, n, c, h, w, sh, sw) -> tuple[str, tuple, tuple]:
    total = n * c * h * sh * w * sw
    body = f"""KERNEL void {name}({_ptr("x")}, {_ptr("y", const=False)})
{{
    const int idx = BLOCK_X * {THREADS} + THREAD_X;
    if (idx >= {total}) return;
    const int ox = idx % {w * sw};
    const int oy = (idx / {w * sw}) % {h * sh};
    const int plane = idx / {h * sh * w * sw};
    y[idx] = x[plane * {h * w} + (oy / {sh}) * {w} + ox / {sw}];
}}
"""
    return body, (-(-total // THREADS), 1, 1), (THREADS, 1, 1)


def _indent(code: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else line for line in code.splitlines())
