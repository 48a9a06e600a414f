"""Convolution kernels: the implicit GEMM (conv2d of any geometry, and linear as its 1x1 case) with
its epilogue and optional fused pool, the split-K reduction, and the direct depthwise kernel.

Tensors are NCHW, stored as `ACT` (float32, or 16 bits at fp16/bf16: see templates/common.py), and
so are the GEMM weights; sums are float32. `epilogue` is a C snippet that turns the accumulated
value `v` of output element `idx` (channel `k`) into the stored one: bias, residual adds,
activations, per-channel scale + shift (unfolded batch norms), all applied in registers before
the single store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ...geometry import ConvGeometry, cdiv
from ...precision import copy_width, vector_width
from ..schedules import MmaTile, Tile
from .common import THREADS, indent, one_thread_each, ptr


@dataclass(frozen=True)
class FusedPool:
    """A non-overlapping pool (stride == kernel, no padding) applied to the conv output in the
    epilogue: GEMM rows are ordered so each pooling window is `size` consecutive rows, of one thread
    (`conv_gemm`) or of lanes 4 apart in one fragment column (the tensor-core kernels; windows of
    1, 2, 4 or 8 pixels: passes/fuse_pool.py)."""
    kind: str  # "max" or "avg"
    kh: int
    kw: int
    ph: int    # pooled output height and width
    pw: int

    @property
    def size(self) -> int:
        return self.kh * self.kw


def gemm_rows(geo: ConvGeometry, pool: FusedPool | None) -> int:
    """An implicit GEMM's rows: the output pixels, or with a fused pool the conv pixels inside windows."""
    return geo.n * (pool.ph * pool.pw * pool.size if pool else geo.pixels)


def conv_gemm(name: str, geo: ConvGeometry, *, extra_args: list[str], epilogue: str, tile: Tile, gated: bool,
              pool: FusedPool | None = None, splits: int = 1, chunk: int = 0
              ) -> tuple[str, tuple, tuple]:
    """Implicit-GEMM convolution (also linear: h = w = kh = kw = 1). GEMM M = N*P*Q output pixels,
    N = K/groups output channels, reduction R = C/groups*KH*KW; the group is blockIdx.z.
    x (N, C, H, W), w (groups, R, K/groups), y (N, K, P, Q).
    Slices of BK reduction values flow through two shared buffers (`_register_staged`): the next
    slice's global loads go to registers while the current one is multiplied, then into the other
    buffer; one barrier per slice.
    With splits > 1 (groups == 1), blockIdx.z is the split: each block writes its raw partial sums
    to ws (splits, K, M), and the last block of a tile to finish adds them up and applies the
    epilogue (see `_finish`).
    With `pool`, only the conv pixels inside pooling windows are computed, a thread owns whole
    windows, and it stores the pooled value: y is then (N, K, PH, PW).
    With `gated`, a second input gate (N, C) scales each input value by its sample's channel gate
    as it is loaded (a squeeze-excitation `x * s` the conv reads without it being stored).
    Its products are float32 ones, on the CUDA cores: the fp32 kernel (every other precision runs
    its GEMMs on the tensor cores)."""
    k, groups, kg, pq = geo.k, geo.groups, geo.kg, geo.pixels
    m_total = gemm_rows(geo, pool)
    t = tile
    nt = t.threads
    assert nt % t.bm == 0 and (t.bk * t.bn) % nt == 0
    assert not pool or (t.tm % pool.size == 0 and splits == 1)
    split = splits > 1
    r_begin = f"g * {chunk}" if split else "0"
    rows_per = t.bm // t.tm
    # a thread's i-th row: interleaved (coalesced stores), or contiguous when it must own whole windows
    if pool:
        row = f"ty * {t.tm} + i"
    elif t.grouped:  # runs of 4 rows, the runs BM/2 apart (TM = 8) so a warp still covers 64 pixels
        assert t.tm == 8
        row = f"(i / 4) * {t.bm // 2} + ty * 4 + i % 4"
    else:
        row = f"ty + i * {rows_per}"
    inputs = [ptr("x"), *([ptr("gate")] if gated else []), ptr("w"), *([table_param()] if geo.taps > 1 else [])]
    args = _parameters(inputs, split, extra_args)
    grid = (cdiv(m_total, t.bm), cdiv(kg, t.bn), splits if split else groups)
    assert not split or groups == 1
    if pool:
        finish = _pool_epilogue(t, pool, m_total, geo.p, geo.q, k, kg, epilogue)
    else:
        channel = "kl" if split else f"g * {kg} + kl"
        finish = _finish(lambda code, store: _plain_epilogue(t, row, m_total, pq, kg, channel, code, store, k),
                         splits, k, m_total, grid[0], epilogue)
    products = f"""UNROLL for (int kk = 0; kk < {t.bk}; ++kk) {{
    float a[{t.tm}];
    float b[{t.tn}];
    UNROLL for (int i = 0; i < {t.tm}; ++i) a[i] = As[buf][kk][{row}];
    UNROLL for (int j = 0; j < {t.tn}; ++j) b[j] = Bs[buf][kk][tx * {t.tn} + j];
    UNROLL for (int i = 0; i < {t.tm}; ++i)
        UNROLL for (int j = 0; j < {t.tn}; ++j) acc[i][j] += a[i] * b[j];
}}"""
    body = f"""KERNEL void {name}({args})
{{
    SHARED float As[2][{t.bk}][{t.bm}] ALIGNED16;  /* [buffer][reduction][pixel] */
    SHARED float Bs[2][{t.bk}][{t.bn}] ALIGNED16;  /* [buffer][reduction][channel] */
    const int tid = THREAD_X;
    const int g = BLOCK_Z;
    const int m0 = BLOCK_X * {t.bm};
    const int n0 = BLOCK_Y * {t.bn};
    const int ty = tid % {rows_per};  /* row i of this thread: m0 + {row} */
    const int tx = tid / {rows_per};  /* columns n0 + tx*{t.tn} + j */
{_window(geo, t.bm, t.bn, pool, splits, chunk, gated)}
    float acc[{t.tm}][{t.tn}];
    UNROLL for (int i = 0; i < {t.tm}; ++i)
        UNROLL for (int j = 0; j < {t.tn}; ++j) acc[i][j] = 0.0f;
{_register_staged(t, geo, m_total, r_begin, gated, products)}

{finish}
}}
"""
    return body, grid, (nt, 1, 1)


def conv_mma(name: str, geo: ConvGeometry, *, extra_args: list[str], epilogue: str, tile: MmaTile, gated: bool,
             splits: int = 1, chunk: int = 0, channels_last: tuple[bool, bool] = (False, False),
             pool: FusedPool | None = None, out_pitch: int = 0, rounded_input: bool = False
             ) -> tuple[str, tuple, tuple]:
    """The implicit GEMM of `conv_gemm` (same arguments, layouts, split-K, gate and fused pool) on
    the tensor cores: TF32 m16n8k8 products with float32 accumulators.

    Slices of BK reduction values flow through `tile.stages` shared-memory buffers: each thread
    copies its elements of a slice with `cp.async`, `stages - 1` slices ahead of the one being
    multiplied, one barrier per slice: input pixels 4 bytes at a time (zero-filled where the window
    leaves the image; NCHW pixels of a window are not contiguous), weights 16 bytes at a time: four
    channels of a reduction index, w (groups, R, pitch) with rows padded with zeros to
    `weight_pitch` channels and Bs [reduction][channel]; beside an NHWC input four reduction values
    of one output channel, w (groups, K/g, pitch) with each channel's R values padded to a whole
    number of copies (`channel_major`, `conv_mma_weights`) and Bs [channel][reduction]. A gated conv
    of an NCHW input scales each input value by its gate on the way, so it loads through registers
    instead (the next slice while this one is multiplied, two buffers); of an NHWC one, each thread
    scales its own copies of a slice by their gates once they have landed, before the barrier that
    shows them to the other warps. Inputs are rounded to TF32 once per block, in shared
    memory (as the tensor cores read them: `TF32_OPERAND`): each thread rounds its own copies of a
    slice once they have landed, with the gates where there are (`_rework_landed`), or, loaded
    through registers, as they enter it (with the weights, w (groups, R, K/g), Bs
    [reduction][channel]); the weights come rounded. With `rounded_input` (ungated), x is stored
    rounded already (passes/assign_precision.py) and lands as it is. The warps read an NHWC input's
    A fragments with `ldmatrix` (four 8x4 float32 matrices per 16x8 fragment: `LDMATRIX_X4_F32`),
    an NCHW one's value by value, and the B fragments of channel-major weights with `ldmatrix` too
    (four 8x4 matrices: two 8-channel fragments, each reduction values +0 and +4), others value by
    value.

    `channels_last` (input, output): tensors stored NHWC (passes/assign_layout.py). An NHWC input is
    copied 16 bytes (four channels of one pixel) at a time too (8 or 4 where a channel group is not
    whole vectors: `copy_width`, `_copy_column`): the reduction runs over (ky, kx, channel), the
    weight rows and the tap table in that order (`conv_mma_weights`, `tap_table`), and As holds
    [pixel][reduction] so each copy lands in 16 contiguous bytes. Each thread then copies several
    pixels' windows, their corners computed once. An NHWC output is stored (and its residuals read)
    at index m * K + k; with `out_pitch` channels per pixel instead (padded to whole 16-byte
    vectors), at m * out_pitch + k, zeros in channels K to out_pitch - 1.

    The buffers are carved from dynamic shared memory (`Launch.shared_bytes`): three or four
    stages of a large tile need more than the 48 KB a block may declare statically.

    Each warp multiplies its WM x WN warp tile. Reduction-major rows are padded by 8 floats, so a
    warp's fragment reads (rows t and t+4, columns g) fall in 32 distinct banks; NHWC rows
    ([pixel]) and weight rows ([channel]) by 4, an odd number of 16-byte groups, so the 8 rows an
    `ldmatrix` matrix reads fall in 8 different bank groups, and threads copy into rows spread so
    each 8 lanes' 16-byte copies fill 8 different bank groups (`_spread_rows`; narrower copies
    take their pieces in lane-dependent orders, `_per_copy`; a copy is rounded and scaled in one
    access each way, `_rework_landed`): every shared access is served in one pass (the bank check,
    tests/test_race_check.py). The epilogue runs on the accumulator fragments in registers: lane
    (g, t) holds pixels g and g+8 of each 16-row fragment, channels 2t and 2t+1 of each 8-column
    one (`_fragment_epilogue`; with a pool, the lanes of a window combine their values by warp
    shuffles: `_fragment_pool_epilogue`)."""
    nhwc_in, nhwc_out = channels_last
    t, split, copies = tile, splits > 1, not gated or nhwc_in
    nt, mi, ni = t.threads, t.wm // 16, t.wn // 8
    by_channel = channel_major(weight_vector(False, gated, nhwc_in), nhwc_in)  # B fragments by ldmatrix
    rows = geo.kg if by_channel else geo.reduction  # w's rows per group, and their length
    pitch = weight_pitch(geo.reduction if by_channel else geo.kg, VECTOR if copies else 0)
    stages = t.stages if copies else 2
    a_per, a_step = t.bm * t.bk // nt, nt // t.bm
    pixels = _vector_pixels(t, VECTOR)  # NHWC: the pixels whose windows a thread copies
    width = copy_width(geo.cg, "tf32")  # NHWC: the channels one copy moves
    assert nt % t.bm == 0 and nt % t.bn == 0 and t.bk % 8 == 0 and t.wm % 16 == 0 and t.wn % 16 == 0
    assert not split or geo.groups == 1
    assert not (rounded_input and gated), "a gate's product must be rounded"
    m_total, kg = gemm_rows(geo, pool), geo.kg
    r_begin = f"g * {chunk}" if split else "0"
    inputs = [ptr("x"), *([ptr("gate")] if gated else []), ptr("w"), *([table_param()] if geo.taps > 1 else [])]
    args = _parameters(inputs, split, extra_args)
    grid = (cdiv(m_total, t.bm), cdiv(kg, t.bn), splits if split else geo.groups)

    def products(buf: str) -> str:
        """The warp tile's products over the BK values of shared buffer `buf`."""
        if nhwc_in:  # lane: row lane % 8 of matrix lane / 8: pixels +8 * (lane / 8 % 2), k +4 * (lane / 16)
            a_load = f"""UNROLL for (int i = 0; i < {mi}; ++i)
        LDMATRIX_X4_F32(a[i], &As[0][0][0], ((({buf}) * {t.bm} + wm0 + i * 16 + lane % 8 + 8 * (lane / 8 % 2))
                                             * {t.a_shape(True)[1]} + kk + 4 * (lane / 16)));"""
        else:
            a_load = f"""UNROLL for (int i = 0; i < {mi}; ++i) {{
        const int row = wm0 + i * 16 + fg;
        a[i][0] = As[{buf}][kk + ft][row];
        a[i][1] = As[{buf}][kk + ft][row + 8];
        a[i][2] = As[{buf}][kk + ft + 4][row];
        a[i][3] = As[{buf}][kk + ft + 4][row + 8];
    }}"""
        if by_channel:  # Bs[channel][reduction]: the fragments of channels j * 8 and j * 8 + 8 in one ldmatrix
            b_load = f"""float b[{ni // 2}][4];  /* b[j / 2][2 * (j % 2) + e]: value e of fragment j */
    UNROLL for (int j = 0; j < {ni // 2}; ++j)  /* lane: channels +8 * (lane / 16), k +4 * (lane / 8 % 2) */
        LDMATRIX_X4_F32(b[j], &Bs[0][0][0], ((({buf}) * {t.bn} + wn0 + j * 16 + lane % 8 + 8 * (lane / 16))
                                             * {t.b_shape(channel_major=True)[1]} + kk + 4 * (lane / 8 % 2)));"""
            b_frag = "&b[j / 2][2 * (j % 2)]"
        else:
            b_load = f"""float b[{ni}][2];
    UNROLL for (int j = 0; j < {ni}; ++j) {{
        const int col = wn0 + j * 8 + fg;
        b[j][0] = Bs[{buf}][kk + ft][col];
        b[j][1] = Bs[{buf}][kk + ft + 4][col];
    }}"""
            b_frag = "b[j]"
        return f"""UNROLL for (int kk = 0; kk < {t.bk}; kk += 8) {{
    float a[{mi}][4];
    {a_load}
    {b_load}
    UNROLL for (int i = 0; i < {mi}; ++i)
        UNROLL for (int j = 0; j < {ni}; ++j) MMA_TF32(acc[i][j], a[i], {b_frag});
}}"""

    if copies:
        if geo.taps > 1:
            a_source = f"""const int4 e = taps[r < r_end ? r : 0];  /* offset in the window, dy, dx, channel */
    const bool ok = am < {m_total} && r < r_end && (unsigned)(ih0 + e.y) < {geo.h}u && (unsigned)(iw0 + e.z) < {geo.w}u;
    GLOBAL const float* src = xw + e.x;"""
        else:  # reduction index = channel
            a_source = f"""const bool ok = in_image && am < {m_total} && r < r_end;
    GLOBAL const float* src = xw + r * {geo.h * geo.w};"""

        def issue_inputs(kbase: str, buf: str) -> str:
            if nhwc_in:  # 16 bytes of a window per copy, into [pixel][reduction] rows
                return _nhwc_copies(geo, kbase, buf, pixels, VECTOR, width, f"CP_ASYNC{4 * width}")
            return f"""UNROLL for (int i = 0; i < {a_per}; ++i) {{
    const int r = {kbase} + tid / {t.bm} + i * {a_step};
    {a_source}
    CP_ASYNC4(&As[{buf}][tid / {t.bm} + i * {a_step}][tid % {t.bm}], src, ok);
}}"""

        def landed(kbase: str, buf: str) -> str:  # rounded once per block, not by each warp reading them
            if nhwc_in:
                return _rework_landed(geo, kbase, buf, pixels, VECTOR, width, gated)
            value = f"As[{buf}][tid / {t.bm} + i * {a_step}][tid % {t.bm}]"
            return f"UNROLL for (int i = 0; i < {a_per}; ++i) {value} = TF32_OPERAND({value});"

        weights = _channel_major_copies(t, geo.kg, pitch) if by_channel else _reduction_major_copies(t, pitch, VECTOR)
        main = _pipelined(t, stages, r_begin, weights, VECTOR, issue_inputs, products, None if rounded_input else landed)
    else:
        main = _register_staged(t, geo, m_total, r_begin, gated, products("buf"), rounding="TF32_OPERAND")

    (ar, ac), (br, bc) = t.a_shape(nhwc_in), t.b_shape(by_channel)
    a_order = "[pixel][reduction]" if nhwc_in else "[reduction][pixel]"
    b_order = "[channel][reduction]" if by_channel else "[reduction][channel]"
    a_bytes = 4 * stages * ar * ac  # a multiple of 16: Bs stays 16-byte aligned
    body = f"""KERNEL void {name}({args})
{{
    DYNAMIC_SHARED({a_bytes + 4 * stages * br * bc});  /* deep pipelines need more than 48 KB */
    SHARED_VIEW(float, As, {stages}, [{ar}][{ac}], 0);  /* [buffer]{a_order} */
    SHARED_VIEW(float, Bs, {stages}, [{br}][{bc}], {a_bytes});  /* [buffer]{b_order} */
{_warp_setup(t)}
{_window(geo, t.bm, t.bn, pool, splits, chunk, gated, (rows, pitch), pixels=pixels if nhwc_in else None)}
{main}

{_mma_finish(t, geo, pool, splits, grid[0], epilogue, nhwc_out, out_pitch)}
}}
"""
    return body, grid, (nt, 1, 1)


VECTOR = vector_width("tf32")  # float32 values per 16-byte cp.async
HALF_VECTOR = vector_width("fp16")  # 16-bit values per 16-byte load


class WeightCopies(NamedTuple):
    """How a cp.async kernel's threads copy the weights of a slice into Bs: C lines run once
    (`setup`), and `issue(kbase, buf)`, the copies of the slice at reduction index `kbase`."""
    setup: str
    issue: object


def _reduction_major_copies(t: MmaTile, pitch: int, vector: int) -> WeightCopies:
    """Weight rows (one per reduction index, `pitch` channels, a multiple of `vector`) copied
    `vector` channels (float32 or 16-bit ones) at a time into Bs[reduction][channel]."""
    copy = "CP_ASYNC16_HALF" if vector == HALF_VECTOR else "CP_ASYNC16"
    row_vectors = t.bn // vector
    v_step = t.threads // row_vectors  # a thread copies the same channels of rows v_step apart
    b_vectors = max(t.bk // v_step, 1)
    assert t.threads % row_vectors == 0 and (t.bk % v_step == 0 or v_step % t.bk == 0) and pitch % vector == 0
    idle = f"if (tid < {t.bk * row_vectors}) " if v_step > t.bk else ""  # more threads than copies
    v_row = _spread_rows(f"tid / {row_vectors}", row_vectors, t.b_shape()[1] * 16 // vector, min(v_step, t.bk))
    setup = f"""const int v_col = n0 + tid % {row_vectors} * {vector};  /* the first of this thread's weight channels */
const int v_row = {v_row};  /* and its first row */
GLOBAL const ACT* wv = wg + v_row * {pitch} + v_col;"""

    def issue(kbase: str, buf: str) -> str:
        return f"""UNROLL for (int i = 0; i < {b_vectors}; ++i) {{  /* {vector} channels of a weight row per copy */
    const int r = {kbase} + v_row + i * {v_step};
    {idle}{copy}(&Bs[{buf}][v_row + i * {v_step}][tid % {row_vectors} * {vector}],
    {" " * len(idle + copy)} wv + ({kbase} + i * {v_step}) * {pitch}, r < r_end && v_col < {pitch});
}}"""
    return WeightCopies(setup, issue)


def _channel_major_copies(t: MmaTile, kg: int, pitch: int) -> WeightCopies:
    """The TF32 kernel's: weight rows (one per output channel, `pitch` reduction values, a
    multiple of 4) copied 4 reduction values at a time into Bs[channel][reduction], rows spread
    as an NHWC input's pixels are (`_spread_rows`); channels past K/g are zero-filled."""
    per_row = t.bk // VECTOR  # copies per channel and slice
    step = t.threads // per_row  # a thread copies the same reduction values of channels `step` apart
    assert t.threads % per_row == 0 and t.bn % step == 0
    row = _spread_rows(f"tid / {per_row}", per_row, t.b_shape(channel_major=True)[1] * 4, step)
    setup = f"""const int b_row = {row};  /* this thread's first channel in the tile */
const int b_r = tid % {per_row} * {VECTOR};  /* and its reduction values in a slice */
GLOBAL const ACT* wv = wg + (n0 + b_row) * {pitch} + b_r;"""

    def issue(kbase: str, buf: str) -> str:
        return f"""UNROLL for (int i = 0; i < {t.bn // step}; ++i)  /* {VECTOR} reduction values of a channel per copy */
    CP_ASYNC16(&Bs[{buf}][b_row + i * {step}][b_r], wv + i * {step * pitch} + {kbase},
               {kbase} + b_r < r_end && n0 + b_row + i * {step} < {kg});"""
    return WeightCopies(setup, issue)


def _pipelined(t: MmaTile, stages: int, r_begin: str, weights: WeightCopies, vector: int, issue_inputs, products,
               landed=None) -> str:
    """The main loop of a tensor-core kernel whose slices reach shared memory by cp.async (`vector`
    values per 16-byte copy: float32 or 16-bit ones): `stages` buffers As/Bs[s], each thread's
    copies of a slice issued `stages - 1` slices ahead of the one being multiplied, one barrier per
    slice. `issue_inputs(kbase, buf)` copies the input slice at reduction index `kbase` into buffer
    `buf`, `weights` its weights; `products(buf)` multiplies a buffer. `landed(kbase, buf)`, if
    given, is what each thread does to its own copies of a slice once they have landed, before the
    barrier."""
    state = "CP_ASYNC_STATE_HALF" if vector == HALF_VECTOR else "CP_ASYNC_STATE"

    def issue(kbase: str, buf: str) -> str:
        return f"{issue_inputs(kbase, buf)}\n{weights.issue(kbase, buf)}"

    in_flight = stages * (t.bm * t.bk + t.bk * t.bn) // t.threads  # at most: a thread's share of `stages` slices
    after_wait = "\n" + indent(landed(f"{r_begin} + it * {t.bk}", "read"), 8) if landed else ""
    return f"""    {state}({in_flight});  /* (OpenCL's emulation: the copies in flight) */
{indent(weights.setup, 4)}
    const int slices = (r_end - {r_begin} + {t.bk - 1}) / {t.bk};
    UNROLL for (int s = 0; s < {stages - 1}; ++s) {{  /* the first stages - 1 slices in flight */
        if (s < slices) {{
{indent(issue(f"{r_begin} + s * {t.bk}", "s"), 12)}
        }}
        CP_ASYNC_COMMIT();
    }}
    int read = 0, fill = {stages - 1};  /* the buffers slices it and it + stages - 1 go to */
    NO_UNROLL for (int it = 0; it < slices; ++it) {{  /* (unrolled, the 16-bit loop holds 20 more registers) */
        CP_ASYNC_WAIT({stages - 2});  /* this thread's copies of slice it have landed */{after_wait}
        BARRIER();                    /* everyone's; and everyone is done with the buffer refilled next */
        if (it + {stages - 1} < slices) {{
{indent(issue(f"{r_begin} + (it + {stages - 1}) * {t.bk}", "fill"), 12)}
        }}
        CP_ASYNC_COMMIT();  /* every iteration commits a group (maybe empty): the wait counts groups */
{indent(products("read"), 8)}
        read = read == {stages - 1} ? 0 : read + 1;
        fill = fill == {stages - 1} ? 0 : fill + 1;
    }}"""


def _rework_landed(geo: ConvGeometry, kbase: str, buf: str, pixels: VectorPixels, vector: int,
                   width: int, gated: bool) -> str:
    """What a thread does to its own NHWC input copies of the slice at `kbase` in As[buf] (`width`
    values each) once they have landed: a gated conv's values times their channels' gates (the
    gate of a_gate[i] + channel), rounded as the mul would have stored them (16 bits); at tf32,
    every value rounded to TF32, as the tensor cores take it (`SCALE_*`, `ROUND_TF32X*`: one
    access each way)."""
    count, per_pixel, step = pixels.count, pixels.per_pixel, pixels.step
    at = _copy_column(per_pixel, vector, width)
    value = f"As[{buf}][a_row + i * {step}][{at}]"
    if not gated:
        assert vector == VECTOR, "16-bit copies land as they are multiplied"
        rework = f"{value} = TF32_OPERAND({value});" if width == 1 else f"ROUND_TF32X{width}(&{value});"
        return _per_copy(f"""    UNROLL for (int i = 0; i < {count}; ++i)
        {rework}""", vector, width)
    channel = "taps[r].w" if geo.taps > 1 else "r"
    if width == 1:  # a single float32 value (a 16-bit copy holds two at least)
        rework = f"{value} = TF32_OPERAND({value} * gate[a_gate[i] + c]);"
    else:
        rework = f"SCALE_{'U16' if vector == HALF_VECTOR else 'TF32'}X{width}(&{value}, gate + a_gate[i] + c);"
    return _per_copy(f"""    const int r = {kbase} + {at};
    const int c = r < r_end ? {channel} : 0;  /* past the reduction: zeros, times any gate */
    UNROLL for (int i = 0; i < {count}; ++i)
        {rework}""", vector, width)


def _nhwc_copies(geo: ConvGeometry, kbase: str, buf: str, pixels: VectorPixels, vector: int,
                 width: int, copy: str) -> str:
    """This thread's cp.async copies (the word `copy`, of `width` values) of its NHWC input vectors
    of the slice at `kbase` (`_nhwc_vectors`) into the [pixel][reduction] rows of As[buf]."""
    per_pixel, step = pixels.per_pixel, pixels.step
    at = _copy_column(per_pixel, vector, width)
    return _nhwc_vectors(geo, kbase, pixels, vector, width, lambda i, src, pred: (
        f"{copy}(&As[{buf}][a_row + {i} * {step}][{at}], {src}, {pred})"))


class VectorPixels(NamedTuple):
    """How a block's threads split the 16-byte vectors of an NHWC input slice (`_vector_pixels`)."""
    count: int      # pixels per thread
    per_pixel: int  # vectors per pixel (V)
    step: int       # between a thread's pixels
    first: str      # C: the thread's first pixel row, a_row


def _vector_pixels(t: MmaTile, vector: int) -> VectorPixels:
    """How a block's threads split the 16-byte vectors of an NHWC input slice (BM pixels x BK
    values): thread tid takes vector tid % V of pixels a_row + i * step, a_row being tid / V spread
    (`_spread_rows`) over the As rows of (BK + padding) values."""
    per_pixel = t.bk // vector
    assert t.threads % per_pixel == 0
    row_bytes = t.a_shape(True, half=vector == HALF_VECTOR)[1] * 16 // vector
    return VectorPixels(t.bm * per_pixel // t.threads, per_pixel, t.threads // per_pixel,
                        _spread_rows(f"tid / {per_pixel}", per_pixel, row_bytes, t.threads // per_pixel))


def _spread_rows(row: str, copies: int, row_bytes: int, rows: int) -> str:
    """C: the shared-memory row a thread copies into, given its row `row` in thread order (`copies`
    16-byte copies per row, rows `row_bytes` apart: an odd number of 16-byte bank groups; the
    threads' rows in thread order: 0 to `rows` - 1, whole runs of 8 where they are spread). The 8
    lanes of a 128-byte phase (the 16-byte accesses shared memory serves at once) copy into
    8 / copies rows, whose copies must fall in 8 different groups of 4 banks: rows in thread order
    would overlap (row r begins at group r * row_bytes / 16 mod 8), so each run of 8 rows is
    permuted, a phase's rows `copies` groups apart. A warp still copies the same pixels (the same
    global memory), only each to another thread."""
    per_phase = 8 // copies
    if per_phase <= 1:
        return row
    groups = row_bytes // 16
    assert row_bytes % 16 == 0 and groups % 2 == 1, "rows an odd number of 16-byte groups apart"
    assert rows % 8 == 0, "each run of 8 rows is permuted within itself"
    step = copies * pow(groups, -1, 8) % 8  # rows whose first groups are `copies` apart
    return f"({row}) / 8 * 8 + (({row}) % 8 / {per_phase} + ({row}) % {per_phase} * {step}) % 8"


def _copy_column(per_pixel: int, vector: int, width: int) -> str:
    """Where in a slice's row (a pixel's reduction values) this thread's copy of `width` values
    lies: its vector's `vector` values are copied in one piece when they are whole channels of one
    tap, else `width` at a time (copy_width: a pixel's channels are not whole 16-byte vectors),
    piece by piece (`_per_copy`)."""
    return f"tid % {per_pixel} * {vector}" + ("" if width == vector else f" + piece * {width}")


def _per_copy(body: str, vector: int, width: int) -> str:
    """`body` (C lines, indented once) in a block, once per copy of `width` values of this thread's
    vectors: the pieces of a vector in turn, from piece lane / 8 on, so each 8 lanes (whose vectors
    fall in 8 different bank groups, `_spread_rows`) copy other banks of their groups."""
    if width == vector:
        return f"{{\n{body}\n}}"
    pieces = vector // width
    return f"""UNROLL for (int j = 0; j < {pieces}; ++j) {{  /* {width} values a copy */
    const int piece = (j + tid / 8) % {pieces};
{body}
}}"""


def _nhwc_vectors(geo: ConvGeometry, kbase: str, pixels: VectorPixels, vector: int, width: int,
                  move) -> str:
    """Each of this thread's NHWC input copies of the slice at `kbase` (see `_vector_pixels`,
    `_copy_column`): `width` channels of pixel i from reduction index r on, moved by the statement
    `move(i, src, pred)` (pred false: the window tap is outside the image or past the reduction,
    nothing read)."""
    count, per_pixel = pixels.count, pixels.per_pixel
    tap = ("const int4 e = taps[r < r_end ? r : 0];  /* offset in the window, dy, dx, channel */\n"
           "    const int ex = e.x, ey = e.y, ez = e.z;" if geo.taps > 1 else
           "const int ex = r, ey = 0, ez = 0;  /* the reduction index is the channel */")
    pred = f"r < r_end && (unsigned)(a_h[i] + ey) < {geo.h}u && (unsigned)(a_w[i] + ez) < {geo.w}u"
    column = _copy_column(per_pixel, vector, width)
    return _per_copy(f"""    const int r = {kbase} + {column};  /* the same {width} channels of each window */
    {tap}
    UNROLL for (int i = 0; i < {count}; ++i)
        {move("i", "x + a_off[i] + ex", pred)};""", vector, width)


def weight_vector(half: bool, gated: bool, nhwc_in: bool) -> int:
    """The weights a tensor-core kernel copies per 16-byte cp.async (0: it loads them through
    registers): the TF32 kernel unless gated of an NCHW input, the 16-bit one when its input is NHWC."""
    if half:
        return HALF_VECTOR if nhwc_in else 0
    return 0 if gated and not nhwc_in else VECTOR


def weight_pitch(length: int, vector: int) -> int:
    """The length of a tensor-core kernel's weight rows (`length` values): where they are copied
    `vector` values at a time (`weight_vector`), padded with zeros to a multiple of it."""
    return cdiv(length, vector) * vector if vector else length


def channel_major(vector: int, nhwc_in: bool) -> bool:
    """The kernel's weight rows are output channels (K/g rows of R values; else R rows of K/g):
    the TF32 kernel's that copies them (`vector` float32 values at a time) beside an NHWC input,
    so that `ldmatrix` reads its B fragments. (An NCHW input's kernel reads them value by value:
    with `ldmatrix`, its race-check rendering computes the first B fragment of each warp wrong on
    PoCL, though the plain rendering is exact, the values ldmatrix returns match shared memory, and
    a printf reading them makes the result exact too: most likely PoCL mistranslating a private
    array written through a pointer by a function with barriers, but not proven, so not used.)"""
    return vector == VECTOR and nhwc_in


def conv_mma_weights(matrix: np.ndarray, geo: ConvGeometry, channels_last: bool, vector: int) -> np.ndarray:
    """GEMM weights (groups, R, K/g) as the tensor-core kernels read them, copied `vector` values at
    a time (`weight_vector`): rows of `weight_pitch` values, zeros after the K/g channels, or
    `channel_major`, (groups, K/g, pitch) with zeros after the R reduction values; with their input
    NHWC, the reduction in (ky, kx, channel) order (`krsc_rows`)."""
    if channels_last:
        matrix = krsc_rows(matrix, geo)
    if channel_major(vector, channels_last):
        matrix = matrix.transpose(0, 2, 1)
    return np.pad(matrix, [(0, 0), (0, 0), (0, weight_pitch(matrix.shape[-1], vector) - matrix.shape[-1])])


def krsc_rows(matrix: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """GEMM weights (groups, R, K/g) with the reduction in (ky, kx, channel) order instead of
    (channel, ky, kx): the order an NHWC input window is read in (`tap_table`)."""
    groups, _, kg = matrix.shape
    return matrix.reshape(groups, geo.cg, geo.taps, kg).transpose(0, 2, 1, 3).reshape(groups, -1, kg)


def conv_mma16(name: str, geo: ConvGeometry, *, extra_args: list[str], epilogue: str, tile: MmaTile, gated: bool,
               bf16: bool, splits: int = 1, chunk: int = 0, channels_last: tuple[bool, bool] = (False, False),
               pool: FusedPool | None = None, out_pitch: int = 0) -> tuple[str, tuple, tuple]:
    """The implicit GEMM of `conv_mma` (a gate and a fused pool too) on 16-bit operands (fp16 or
    bf16 storage): m16n8k16 tensor-core products with float32 accumulators, fed by `ldmatrix`. A
    gated conv's input value times its gate is rounded to 16 bits, as the mul would have stored it
    (and as the NumPy backend computes it): every operand of the products is a stored value.

    An NHWC input (`channels_last`, as in `conv_mma`) flows through `tile.stages` buffers by
    cp.async, as in `conv_mma`: 16 bytes (eight channels of a window) per copy (8 or 4, as there),
    the reduction over (ky, kx, channel), into As[pixel][reduction], from which a plain `ldmatrix`
    gives the row-major A fragment; the weight rows, padded to a multiple of 8, are copied 16 bytes
    at a time into Bs[reduction][channel]. An NCHW input cannot be copied so (a 4-byte copy moves
    two pixels that need not be neighbours in the input): each thread loads its elements of the next
    slice as raw 16-bit patterns into registers while the warps multiply the current one, then
    stores them into the other of two reduction-major buffers, As[reduction][pixel] and Bs. A gate
    scales an NHWC input's landed copies in shared memory (`_rework_landed`, as in `conv_mma`), an
    NCHW input's values in the registers.

    Rows are padded by 8 values (16 bytes), an odd number of 16-byte groups, so the 8 rows one
    `ldmatrix` reads fall in 8 different bank groups (and the cp.async copies are spread as in
    `conv_mma`). `ldmatrix.trans` turns reduction-major rows
    into the fragments mma.m16n8k16 takes: A as four 8x8 matrices (pixels +0/+8, reduction +0/+8),
    B as two (reduction +0/+8). The epilogue runs on the accumulator fragments in registers, as in
    `conv_mma`; an NHWC output is stored at m * K + k (or m * out_pitch + k, as in `conv_mma`)."""
    t, split = tile, splits > 1
    nhwc_in, nhwc_out = channels_last
    nt, mi, ni = t.threads, t.wm // 16, t.wn // 8
    assert nt % t.bm == 0 and nt % t.bn == 0 and t.bk % 16 == 0 and t.wm % 16 == 0 and t.wn % 8 == 0
    assert not split or geo.groups == 1
    m_total, kg = gemm_rows(geo, pool), geo.kg
    r_begin = f"g * {chunk}" if split else "0"
    inputs = [ptr("x"), *([ptr("gate")] if gated else []), ptr("w"), *([table_param()] if geo.taps > 1 else [])]
    args = _parameters(inputs, split, extra_args)
    grid = (cdiv(m_total, t.bm), cdiv(kg, t.bn), splits if split else geo.groups)
    (ar, ac), (br, bc) = t.a_shape(nhwc_in, half=True), t.b_shape()
    mma = "MMA_BF16" if bf16 else "MMA_F16"

    def products(buf: str) -> str:
        if nhwc_in:  # lane: row lane % 8 of matrix lane / 8: pixels +8 * (lane / 8 % 2), k +8 * (lane / 16)
            a_load = f"""LDMATRIX_X4(a[i], &As[0][0][0], ((({buf}) * {t.bm} + wm0 + i * 16 + lane % 8 + 8 * (lane / 8 % 2))
                                  * {ac} + kk + 8 * (lane / 16)));"""
        else:  # the same rows, read transposed from [reduction][pixel]
            a_load = f"""LDMATRIX_X4_TRANS(a[i], &As[0][0][0], ((({buf}) * {t.bk} + kk + lane % 8 + 8 * (lane / 16)) * {ac}
                                        + wm0 + i * 16 + 8 * (lane / 8 % 2)));"""
        return f"""UNROLL for (int kk = 0; kk < {t.bk}; kk += 16) {{
    unsigned a[{mi}][4];
    unsigned b[{ni}][2];
    UNROLL for (int i = 0; i < {mi}; ++i)
        {a_load}
    UNROLL for (int j = 0; j < {ni}; ++j)  /* lanes 0-15: row lane % 8 of matrix lane / 8 (k +8 * (lane / 8)) */
        LDMATRIX_X2_TRANS(b[j], &Bs[0][0][0], ((({buf}) * {t.bk} + kk + lane % 8 + 8 * (lane / 8 % 2)) * {bc}
                                               + wn0 + j * 8));
    UNROLL for (int i = 0; i < {mi}; ++i)
        UNROLL for (int j = 0; j < {ni}; ++j) {mma}(acc[i][j], a[i], b[j]);
}}"""

    if nhwc_in:
        pixels, pitch = _vector_pixels(t, HALF_VECTOR), weight_pitch(kg, HALF_VECTOR)
        width = copy_width(geo.cg, "fp16")  # the channels one copy moves
        landed = (lambda kbase, buf: _rework_landed(geo, kbase, buf, pixels, HALF_VECTOR, width, gated=True)
                  ) if gated else None
        copy = f"CP_ASYNC{2 * width}_HALF"
        main = _pipelined(t, t.stages, r_begin, _reduction_major_copies(t, pitch, HALF_VECTOR), HALF_VECTOR,
                          lambda kbase, buf: _nhwc_copies(geo, kbase, buf, pixels, HALF_VECTOR, width, copy),
                          products, landed)
        a_bytes = 2 * t.stages * ar * ac  # a multiple of 16: Bs stays 16-byte aligned
        shared = f"""    DYNAMIC_SHARED({t.shared_bytes(True, half=True)});
    SHARED_VIEW(HALF, As, {t.stages}, [{ar}][{ac}], 0);  /* [buffer][pixel][reduction] */
    SHARED_VIEW(HALF, Bs, {t.stages}, [{br}][{bc}], {a_bytes});  /* [buffer][reduction][channel] */"""
    else:
        pixels, pitch = None, None
        main = _register_staged(t, geo, m_total, r_begin, gated, products("buf"), raw=True)
        shared = f"""    SHARED HALF As[2][{ar}][{ac}] ALIGNED16;  /* [buffer][reduction][pixel] */
    SHARED HALF Bs[2][{br}][{bc}] ALIGNED16;  /* [buffer][reduction][channel] */"""

    body = f"""KERNEL void {name}({args})
{{
{shared}
{_warp_setup(t)}
{_window(geo, t.bm, t.bn, pool, splits, chunk, gated, pitch and (geo.reduction, pitch), pixels=pixels)}
{main}

{_mma_finish(t, geo, pool, splits, grid[0], epilogue, nhwc_out, out_pitch)}
}}
"""
    return body, grid, (nt, 1, 1)


def _warp_setup(t: MmaTile) -> str:
    """A tensor-core kernel's scratch (OpenCL's emulation), each thread's place (its lane, the
    lane's accumulator row fg and column pair ft: PTX's g and t; its warp's tile (wm0, wn0) in the
    block's, the group or split g, the block's tile (m0, n0)) and its zeroed accumulator fragments."""
    mi, ni = t.wm // 16, t.wn // 8
    return f"""    MMA_SCRATCH({t.warps});
    const int tid = THREAD_X;
    const int lane = tid % 32;
    const int fg = lane / 4;
    const int ft = lane % 4;
    const int wm0 = (tid / 32) % {t.bm // t.wm} * {t.wm};
    const int wn0 = (tid / 32) / {t.bm // t.wm} * {t.wn};
    const int g = BLOCK_Z;
    const int m0 = BLOCK_X * {t.bm};
    const int n0 = BLOCK_Y * {t.bn};
    float acc[{mi}][{ni}][4];
    UNROLL for (int i = 0; i < {mi}; ++i)
        UNROLL for (int j = 0; j < {ni}; ++j)
            UNROLL for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;"""


def _register_staged(t: Tile | MmaTile, geo: ConvGeometry, m_total: int, r_begin: str, gated: bool,
                     products: str, rounding: str = "", raw: bool = False) -> str:
    """The main loop of a GEMM kernel whose loads go through registers into two shared buffers
    As/Bs[buf] (`conv_gemm`, and the tensor-core kernels that cannot copy by cp.async): the next slice's global loads are in flight while `products` (C code on
    buffer `buf`) multiplies this one, then land in the other buffer; one barrier per slice.
    `rounding`: a word applied to each input value as it enters shared memory (TF32_OPERAND); `raw`:
    16-bit patterns, as stored (see `_load_tiles`)."""
    a_per, a_step = t.bm * t.bk // t.threads, t.threads // t.bm
    b_per, b_step = t.bk * t.bn // t.threads, t.threads // t.bn
    kind = "HALF" if raw else "float"

    def store_slice(buf: str) -> str:
        return f"""UNROLL for (int i = 0; i < {a_per}; ++i) As[{buf}][tid / {t.bm} + i * {a_step}][tid % {t.bm}] = {rounding}(a_reg[i]);
UNROLL for (int i = 0; i < {b_per}; ++i) Bs[{buf}][tid / {t.bn} + i * {b_step}][tid % {t.bn}] = b_reg[i];"""

    return f"""    {kind} a_reg[{a_per}];
    {kind} b_reg[{b_per}];
{_load_tiles(r_begin, t, geo, m_total, gated, spaces=4, raw=raw)}
{indent(store_slice("0"), 4)}
    BARRIER();
    int buf = 0;
    for (int k0 = {r_begin}; k0 < r_end; k0 += {t.bk}) {{
        const int more = k0 + {t.bk} < r_end;
        if (more) {{  /* the next slice's global loads are in flight while this one is multiplied */
{_load_tiles(f"k0 + {t.bk}", t, geo, m_total, gated, spaces=12, raw=raw)}
        }}
{indent(products, 8)}
        if (more) {{
{indent(store_slice("buf ^ 1"), 12)}
        }}
        buf ^= 1;
        BARRIER();
    }}"""


def _parameters(inputs: list[str], split: bool, extra_args: list[str]) -> str:
    """A GEMM kernel's parameter list: its inputs, with split-K the float32 workspace ws and the
    tiles' counters, then the epilogue's arguments and the output y."""
    scratch = [ptr("ws", const=False, stored=False), "GLOBAL int* RESTRICT counters"] if split else []
    return ", ".join([*inputs, *scratch, *extra_args, ptr("y", const=False)])


OUTPUT_STORE = "y[idx] = STORE(v);"  # a GEMM's output value (not split-K's partial sums)


def _finish(loop, splits: int, k: int, m_total: int, grid_x: int, epilogue: str) -> str:
    """The end of a GEMM kernel: `loop(code, store)` runs `code` then `store` on each accumulator
    `v` of the thread (its row `m`, channel `k` and output element `idx`). Without split-K, the
    epilogue then the stored output. With it (blockIdx.z the split), each block stores its raw
    partial sums to ws (splits, K, M), and the last of a tile's blocks to finish (a counter per
    tile, reset by that block for the next call) adds all the partial sums up in split order and
    applies the epilogue: no second kernel."""
    if splits == 1:
        return loop(epilogue, OUTPUT_STORE)
    summed = (f"v = 0.0f;\nUNROLL for (int s = 0; s < {splits}; ++s) v += LOAD_COHERENT(ws[(s * {k} + k) * {m_total}"
              f" + m]);\n{epilogue}")
    counter = f"counters[BLOCK_Y * {grid_x} + BLOCK_X]"
    return f"""{loop("", f"ws[(g * {k} + k) * {m_total} + m] = v;")}
    SHARED int last_block;
    THREADFENCE();  /* this block's partial sums are visible to every block before it is counted */
    BARRIER();
    if (THREAD_X == 0) last_block = ATOMIC_INC(&{counter}) == {splits - 1};
    BARRIER();
    if (last_block) {{  /* every other split of this tile is done */
        THREADFENCE();
{indent(loop(summed, OUTPUT_STORE), 4)}
        if (THREAD_X == 0) {counter} = 0;  /* ready for the next call */
    }}"""


def _mma_finish(t: MmaTile, geo: ConvGeometry, pool: FusedPool | None, splits: int, grid_x: int, epilogue: str,
                channels_last: bool, out_pitch: int = 0) -> str:
    """The end of a tensor-core kernel: `epilogue` on its accumulator fragments, then the store
    (pooled, or through split-K's `_finish`). `out_pitch`: an NHWC output's channels per pixel
    where padded; the tile's columns past K store zeros there (a block tile's columns are a
    multiple of 8, so they cover the padding)."""
    mi, ni, m_total, kg = t.wm // 16, t.wn // 8, gemm_rows(geo, pool), geo.kg
    pitch = out_pitch or geo.k
    assert pitch == geo.k or (channels_last and geo.groups == 1 and splits == 1 and pitch <= cdiv(kg, t.bn) * t.bn)
    channel = "kl" if splits > 1 else f"g * {kg} + kl"
    if pool:
        return _fragment_pool_epilogue(t, geo, pool, channel, channels_last, epilogue, pitch)
    return _finish(_fragment_epilogue(mi, ni, m_total, kg, geo.pixels, geo.k, channel, channels_last, pitch),
                   splits, geo.k, m_total, grid_x, epilogue)


def _fragment_pool_epilogue(t: MmaTile, geo: ConvGeometry, pool: FusedPool, channel: str, channels_last: bool,
                            epilogue: str, pitch: int) -> str:
    """`_fragment_epilogue` with a fused pool: a window's `pool.size` consecutive rows (1, 2, 4 or
    8, within one 8-row half of a fragment) lie in lanes 4, 8, 16 apart, the same registers. Each
    lane applies `epilogue` to its conv value (`idx`: the conv output element, for residuals); the
    window's lanes combine theirs by `SHFL_XOR`, which every lane of the warp reaches (so no branch
    around it); its first lane stores the pooled value."""
    assert 8 % pool.size == 0
    mi, ni, cells, size = t.wm // 16, t.wn // 8, pool.ph * pool.pw, pool.size
    m_total, kg, k = gemm_rows(geo, pool), geo.kg, geo.k
    conv = (f"((nb * {geo.p} + p) * {geo.q} + q) * {k} + k" if channels_last
            else f"((nb * {k} + k) * {geo.p} + p) * {geo.q} + q")
    pooled = f"(nb * {cells} + cell) * {pitch} + k" if channels_last else f"(nb * {k} + k) * {cells} + cell"
    padding = (f"\n                else if (m < {m_total} && kl < {pitch} && m % {size} == 0) "
               f"y[{pooled}] = STORE(0.0f);  /* a padding channel */" if pitch > k else "")
    combine = "v = max_nan(v, other);" if pool.kind == "max" else "v += other;"
    mean = "" if pool.kind == "max" else f" * {1.0 / size!r}f"
    return f"""    WARP_SCRATCH({t.warps});
    UNROLL for (int i = 0; i < {mi}; ++i)
        UNROLL for (int j = 0; j < {ni}; ++j)
            UNROLL for (int e = 0; e < 4; ++e) {{
                const int m = m0 + wm0 + i * 16 + fg + 8 * (e / 2);  /* row m % {size} of window m / {size} */
                const int kl = n0 + wn0 + j * 8 + 2 * ft + e % 2;
                const bool live = m < {m_total} && kl < {kg};  /* the same for a whole window */
                const int nb = m / {cells * size};
                const int cell = (m / {size}) % {cells};  /* pooled pixel */
                const int k = {channel};
                float v = acc[i][j][e];
                if (live) {{
                    const int p = (cell / {pool.pw}) * {pool.kh} + m % {size} / {pool.kw};
                    const int q = (cell % {pool.pw}) * {pool.kw} + m % {size} % {pool.kw};
                    const int idx = {conv};
{indent(epilogue, 20)}
                }}
                UNROLL for (int lanes = 4; lanes < {4 * size}; lanes *= 2) {{  /* the window's other rows */
                    const float other = SHFL_XOR(v, lanes);
                    {combine}
                }}
                if (live && m % {size} == 0) y[{pooled}] = STORE(v{mean});{padding}
            }}"""


def _fragment_epilogue(mi: int, ni: int, m_total: int, kg: int, pq: int, k: int, channel: str,
                       channels_last: bool = False, pitch: int = 0):
    """The loop of `_finish` over a tensor-core kernel's accumulator fragments acc[i][j][e]: lane
    (g, t) holds pixels g and g+8 of each 16-row fragment, channels 2t and 2t+1 of each 8-column one.
    `channels_last`: the output is NHWC, element m * K + k; with `pitch` > K channels per pixel,
    m * pitch + k, and the columns from K to the pitch store zeros. There a lane's two channels of
    a pixel are neighbours: where K/g is even (so both are in the output, or both padding), the
    output's values (`OUTPUT_STORE`) go out in pairs, one 8- or 4-byte store (`STORE_PAIR`)."""
    pitch = pitch or k
    index = f"m * {pitch} + k" if channels_last else f"(nb * {k} + k) * {pq} + pix"
    sample = "" if channels_last else f"""
                    const int nb = m / {pq};
                    const int pix = m - nb * {pq};"""
    limit = kg if pitch == k else pitch

    def loop(epilogue: str, store: str) -> str:
        if pitch > k:  # the epilogue's per-channel constants end at K
            epilogue = f"if (kl < {kg}) {{\n{indent(epilogue, 4)}\n}} else v = 0.0f;  /* a padding channel */"
        if channels_last and kg % 2 == 0 and store == OUTPUT_STORE:
            return f"""    UNROLL for (int i = 0; i < {mi}; ++i)
        UNROLL for (int j = 0; j < {ni}; ++j)
            UNROLL for (int h = 0; h < 2; ++h) {{  /* pixel g + 8h: channels 2t and 2t+1, neighbours */
                const int m = m0 + wm0 + i * 16 + fg + 8 * h;
                const int kl = n0 + wn0 + j * 8 + 2 * ft;
                if (m < {m_total} && kl < {limit}) {{
                    float pair[2];
                    UNROLL for (int e = 0; e < 2; ++e) {{
                        const int k = {channel} + e;
                        const int idx = {index};
                        float v = acc[i][j][2 * h + e];
{indent(epilogue, 24)}
                        pair[e] = v;
                    }}
                    STORE_PAIR(y + m * {pitch} + {channel}, pair[0], pair[1]);
                }}
            }}"""
        return f"""    UNROLL for (int i = 0; i < {mi}; ++i)
        UNROLL for (int j = 0; j < {ni}; ++j)
            UNROLL for (int e = 0; e < 4; ++e) {{
                const int m = m0 + wm0 + i * 16 + fg + 8 * (e / 2);
                const int kl = n0 + wn0 + j * 8 + 2 * ft + e % 2;
                if (m < {m_total} && kl < {limit}) {{{sample}
                    const int k = {channel};
                    const int idx = {index};
                    float v = acc[i][j][e];
{indent(epilogue, 20)}
                    {store}
                }}
            }}"""
    return loop


def _window(geo: ConvGeometry, bm: int, bn: int, pool: FusedPool | None, splits: int, chunk: int, gated: bool,
            weight_rows: tuple[int, int] | None = None, pixels: VectorPixels | None = None) -> str:
    """The per-thread setup of an implicit GEMM's input loads (`_load_tiles`): the output pixel `am`
    whose input window this thread loads (the same for the whole reduction), the window's corner,
    the thread's sample and group in x (and its gates), its group's weights wg (`weight_rows`: rows
    per group and their length; by default R rows of K/g) and its column of them wb (read through
    registers), and the reduction range. `pixels` (`_vector_pixels`): x is NHWC, and the
    thread moves the windows of several pixels instead (`_pixels_nhwc`)."""
    split = splits > 1
    group = "0" if split else "g"  # blockIdx.z is the split when there is one, else the group
    r_end = f"min(g * {chunk} + {chunk}, {geo.reduction})" if split else geo.reduction
    rows, pitch = weight_rows or (geo.reduction, geo.kg)
    weights = f"""GLOBAL const ACT* wg = w + {group} * {rows * pitch};
const int r_end = {r_end};"""
    column = f"""const int b_col = n0 + tid % {bn};  /* this thread's weight column */
GLOBAL const ACT* wb = wg + (tid / {bn}) * {pitch} + b_col;"""
    if pixels:
        return indent(f"""{_pixels_nhwc(geo, pixels, group, pool, gemm_rows(geo, pool), gated)}
{weights}
{column}""", 4)
    decode = _pixel_of_row(geo, pool)
    # the gates of this thread's sample and group: the input value of channel ci is scaled by gg[ci]
    gates = f"\nGLOBAL const ACT* gg = gate + a_n * {geo.c} + {group} * {geo.cg};" if gated else ""
    return indent(f"""/* the output pixel whose input window this thread loads stays the same for the whole reduction */
const int am = m0 + tid % {bm};
{decode}
const int ih0 = a_p * {geo.sh} - {geo.pt};
const int iw0 = a_q * {geo.sw} - {geo.pl};
GLOBAL const ACT* xg = x + (a_n * {geo.c} + {group} * {geo.cg}) * {geo.h * geo.w};{gates}
{weights}
/* loads address from the window's corner (channel 0), and from this thread's weight column */
GLOBAL const ACT* xw = xg + ih0 * {geo.w} + iw0;
const bool in_image = (unsigned)ih0 < {geo.h}u && (unsigned)iw0 < {geo.w}u;
{column}""", 4)


def _pixel_of_row(geo: ConvGeometry, pool: FusedPool | None) -> str:
    """C lines giving GEMM row `am`'s output pixel: sample a_n, row a_p, column a_q. With a fused
    `pool`, rows run window by window: a window's `pool.size` conv pixels are consecutive rows."""
    if not pool:
        return f"""const int a_n = am / {geo.pixels};
const int a_p = (am % {geo.pixels}) / {geo.q};
const int a_q = am % {geo.q};"""
    cells = pool.ph * pool.pw
    return f"""const int a_n = am / {cells * pool.size};
const int a_cell = (am / {pool.size}) % {cells};  /* pooled pixel */
const int a_win = am % {pool.size};                /* position inside its window */
const int a_p = (a_cell / {pool.pw}) * {pool.kh} + a_win / {pool.kw};
const int a_q = (a_cell % {pool.pw}) * {pool.kw} + a_win % {pool.kw};"""


def _pixels_nhwc(geo: ConvGeometry, pixels: VectorPixels, group: str, pool: FusedPool | None, m_total: int,
                 gated: bool) -> str:
    """Where the NHWC input windows this thread moves lie (tile rows a_row + i * step, `pixels`):
    a_off, the window's corner (channel 0 of the group)
    in x; a_h and a_w, its row and column in the image; a_h is H past the last pixel, so no tap of
    that window is in the image and nothing is read. `gated`: a_gate, where its sample's gates of
    the group begin (sample 0 past the last pixel)."""
    count, step = pixels.count, pixels.step
    sample = f"(am < {m_total} ? a_n : 0)"
    gates, gate = (f"\nint a_gate[{count}];", f"\n    a_gate[i] = {sample} * {geo.c} + {group} * {geo.cg};"
                   ) if gated else ("", "")
    return f"""const int a_row = {pixels.first};  /* the first tile row this thread copies */
int a_off[{count}], a_h[{count}], a_w[{count}];{gates}
UNROLL for (int i = 0; i < {count}; ++i) {{
    const int am = m0 + a_row + i * {step};
{indent(_pixel_of_row(geo, pool), 4)}
    const int ih0 = a_p * {geo.sh} - {geo.pt};
    const int iw0 = a_q * {geo.sw} - {geo.pl};
    a_off[i] = ((a_n * {geo.h} + ih0) * {geo.w} + iw0) * {geo.c} + {group} * {geo.cg};
    a_h[i] = am < {m_total} ? ih0 : {geo.h};
    a_w[i] = iw0;{gate}
}}"""


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
{indent(epilogue, 20)}
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
{indent(epilogue, 24)}
                        {combine}
                    }}{scale}
                    y[(nb * {k} + k) * {cells} + cell] = STORE(r);
                }}
            }}
        }}
    }}"""


def _load_tiles(kbase: str, t: Tile | MmaTile, geo: ConvGeometry, m_total: int, gated: bool, spaces: int,
                raw: bool = False) -> str:
    """Registers a_reg/b_reg <- the input-window slice (times its channel's gate when `gated`) and
    the weight slice starting at reduction index kbase (up to the kernel's `r_end`). A kernel with
    more than one tap reads where each reduction index points from `taps` (see `tap_table`): no
    division per element. `raw`: the stored 16-bit patterns themselves, not float32 values (0 is
    +0.0 in fp16 and bf16); a gated value is then rounded to 16 bits, as the mul would store it."""
    a_per, a_step, b_per = t.bm * t.bk // t.threads, t.threads // t.bm, t.bk * t.bn // t.threads
    h, w, kg = geo.h, geo.w, geo.kg
    load, kind, zero = ("", "HALF", "0") if raw else ("LOAD", "float", "0.0f")

    def value(x: str, channel: str) -> str:
        if not gated:
            return f"{load}({x})"
        return f"STORE(LOAD({x}) * LOAD(gg[{channel}]))" if raw else f"LOAD({x}) * LOAD(gg[{channel}])"

    if geo.taps > 1:
        element = f"""const int4 e = taps[r];  /* offset in the window, dy, dx, channel */
        if ((unsigned)(ih0 + e.y) < {h}u && (unsigned)(iw0 + e.z) < {w}u) v = {value("xw[e.x]", "e.w")};"""
    else:  # reduction index = channel
        element = f"""if (in_image) v = {value(f"xw[r * {h * w}]", "r")};"""
    assert t.threads % t.bn == 0
    code = f"""UNROLL for (int i = 0; i < {a_per}; ++i) {{
    const int r = {kbase} + tid / {t.bm} + i * {a_step};
    {kind} v = {zero};
    if (am < {m_total} && r < r_end) {{
        {element}
    }}
    a_reg[i] = v;
}}
"""
    code += f"""UNROLL for (int i = 0; i < {b_per}; ++i) {{  /* rows tid / BN + i * (threads / BN) of the slice, column b_col */
    const int r = {kbase} + tid / {t.bn} + i * {t.threads // t.bn};
    b_reg[i] = (r < r_end && b_col < {kg}) ? {load}(wb[({kbase} + i * {t.threads // t.bn}) * {kg}]) : {zero};
}}"""
    return indent(code, spaces)


def tap_table(geo: ConvGeometry, channels_last: bool = False) -> np.ndarray | None:
    """Where each reduction index r = (channel, ky, kx) of a group reads, as int32 rows (offset from
    the window's corner in x, dy, dx, channel): a kernel's input loads look it up instead of
    dividing r. With x NHWC (`channels_last`), r = (ky, kx, channel). None for one tap, where r is
    the channel."""
    if geo.taps == 1:
        return None
    ci, ky, kx = np.meshgrid(np.arange(geo.cg), np.arange(geo.kh), np.arange(geo.kw), indexing="ij")
    dy, dx = ky * geo.dh, kx * geo.dw
    if channels_last:
        ci, dy, dx = (a.transpose(1, 2, 0) for a in (ci, dy, dx))
        offset = (dy * geo.w + dx) * geo.c + ci
    else:
        offset = ci * geo.h * geo.w + dy * geo.w + dx
    table = np.stack([offset, dy, dx, ci], axis=-1).reshape(-1, 4)
    return np.ascontiguousarray(table, np.int32)


def table_param() -> str:
    return "GLOBAL const int4* RESTRICT taps"


DEPTHWISE_OUTPUTS = 4  # consecutive outputs of a row per thread, from one register window of its input row
DEPTHWISE_WINDOW = 64  # at most this many input values in the window (registers); wider: one output per thread


def depthwise(name: str, geo: ConvGeometry, *, extra_args: list[str], epilogue: str, channels_last: bool = False
              ) -> tuple[str, tuple, tuple]:
    """Depthwise convolution (groups == C == K); w (C, KH*KW). Each thread computes `outputs`
    consecutive outputs of one row: per filter row it loads the input values they cover into a
    register window once ((outputs-1)*SW + (KW-1)*DW + 1 of them, zero outside the image), then
    every product reads registers. The sum runs over the taps in the same order as one output per
    thread would, so the result does not depend on `outputs`.
    `channels_last`: x and y are NHWC (passes/assign_layout.py) and w is (KH*KW, C); consecutive
    threads take consecutive channels of the same pixels, so their loads and stores coalesce."""
    n, c, h, w, p, q, kh, kw = geo.n, geo.c, geo.h, geo.w, geo.p, geo.q, geo.kh, geo.kw
    sh, sw, pt, pl, dh, dw = geo.sh, geo.sw, geo.pt, geo.pl, geo.dh, geo.dw
    outputs = min(DEPTHWISE_OUTPUTS, q)
    while outputs > 1 and (outputs - 1) * sw + (kw - 1) * dw + 1 > DEPTHWISE_WINDOW:
        outputs -= 1
    span = (outputs - 1) * sw + (kw - 1) * dw + 1
    runs = cdiv(q, outputs)  # thread groups of `outputs` along a row
    total = n * c * p * runs
    args = ", ".join([ptr("x"), ptr("w", stored=False), *extra_args, ptr("y", const=False)])
    def at(offset: str) -> str:  # NHWC: neighbouring pixels, and a channel's taps, are C values apart
        return f"({offset}) * {c}" if channels_last else offset

    if channels_last:
        place = f"""const int k = t % {c};
    const int ox0 = (t / {c}) % {runs} * {outputs};
    const int oy = (t / {c * runs}) % {p};
    const int nb = t / {c * runs * p};
    GLOBAL const ACT* xc = x + nb * {h * w * c} + k;
    GLOBAL const float* wc = w + k;"""
        index = f"((nb * {p} + oy) * {q} + ox0 + r) * {c} + k"
    else:
        place = f"""const int ox0 = (t % {runs}) * {outputs};
    const int oy = (t / {runs}) % {p};
    const int plane = t / {runs * p};  /* n * C + k */
    const int k = plane % {c};
    GLOBAL const ACT* xc = x + plane * {h * w};
    GLOBAL const float* wc = w + k * {kh * kw};"""
        index = f"(plane * {p} + oy) * {q} + ox0 + r"
    if span <= DEPTHWISE_WINDOW:
        row = f"""GLOBAL const ACT* xrow = xc + {at(f"iy * {w}")};
            float xr[{span}];
            UNROLL for (int l = 0; l < {span}; ++l) {{
                const int ix = ix0 + l;
                xr[l] = (ix >= 0 && ix < {w}) ? LOAD(xrow[{at("ix")}]) : 0.0f;
            }}
            UNROLL for (int j = 0; j < {kw}; ++j) {{
                const float wv = wc[{at(f"i * {kw} + j")}];
                UNROLL for (int r = 0; r < {outputs}; ++r) acc[r] += xr[r * {sw} + j * {dw}] * wv;
            }}"""
    else:  # a window too wide for registers (a large dilated kernel): read each tap where it lies
        row = f"""UNROLL for (int j = 0; j < {kw}; ++j) {{
                const int ix = ix0 + j * {dw};
                if (ix >= 0 && ix < {w}) acc[0] += LOAD(xc[{at(f"iy * {w} + ix")}]) * wc[{at(f"i * {kw} + j")}];
            }}"""
    body = f"""KERNEL void {name}({args})
{{
    const int t = BLOCK_X * {THREADS} + THREAD_X;
    if (t >= {total}) return;
    {place}
    const int ix0 = ox0 * {sw} - {pl};
    float acc[{outputs}];
    UNROLL for (int r = 0; r < {outputs}; ++r) acc[r] = 0.0f;
    UNROLL for (int i = 0; i < {kh}; ++i) {{
        const int iy = oy * {sh} - {pt} + i * {dh};
        if (iy >= 0 && iy < {h}) {{
            {row}
        }}
    }}
    UNROLL for (int r = 0; r < {outputs}; ++r) {{
        if (ox0 + r < {q}) {{
            const int idx = {index};
            float v = acc[r];
{indent(epilogue, 12)}
            y[idx] = STORE(v);
        }}
    }}
}}
"""
    return (body, *one_thread_each(total))
