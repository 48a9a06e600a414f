"""conv2d: PyTorch's `F.conv2d` semantics (padding int/pair/"same"/"valid", stride, dilation, groups),
plus an optional fused activation, and asymmetric padding [top, left, bottom, right] (ONNX's and
TensorFlow's "SAME" at stride 2, which PyTorch writes as an F.pad before the conv).

NumPy implementation (channels last): dense convs are im2col + one GEMM per batch chunk, with the
columns ordered (kh, kw, C) so each copied run is a contiguous channel vector; 1x1 convs skip
im2col; depthwise convs accumulate one strided tap at a time, never building columns.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import Field, model_validator

from ..codegen import templates as T
from ..geometry import ConvGeometry, cdiv, conv_out_size, same_pad
from .activation import ActivationField, apply_activation
from .base import (GEMM, Example, Layer, NonNegativeInt, NonNegativePair, Pair, PositiveInt, Scratch, fmt_shape, he_init,
                   invalid, pair)

FourPads = Annotated[list[NonNegativeInt], Field(min_length=4, max_length=4)]  # [top, left, bottom, right]
from .onnx_mapping import Unsupported, attributes, compact, float_weight, spatial_pads, symmetric_pad

CACHE_CHUNK = 8 * 2**20  # bytes of im2col columns per GEMM: the GEMM reads them while still in cache


def conv(imp, node):
    a = attributes(node)
    x = imp.data(node)
    w = float_weight(imp.value(node, 1, "weight"), "weight")
    bias = imp.value(node, 2, "bias", optional=True)
    if w.ndim != 4:
        raise Unsupported(f"only 2-D convolutions are supported (a 4-D weight), got a {w.ndim}-D weight")
    k, _, kh, kw = w.shape
    if list(a.get("kernel_shape", [kh, kw])) != [kh, kw]:
        raise Unsupported(f"kernel_shape {a['kernel_shape']} disagrees with the weight's {[kh, kw]}")
    stride, dilation = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    size = imp.shapes[x][1:]
    if len(size) != 2:
        raise Unsupported(f"Conv needs an image input (N,C,H,W), got {fmt_shape(imp.shapes[x])}")
    pads = spatial_pads(a, size, (kh, kw), stride, dilation)
    padding = [symmetric_pad(b, e, n, kk, s, d) for (b, e), n, kk, s, d in zip(pads, size, (kh, kw), stride, dilation)]
    is_same = stride == [1, 1] and pads == [same_pad(kk, d) for kk, d in zip((kh, kw), dilation)]
    if is_same and (None in padding or a.get("auto_pad", "NOTSET").startswith("SAME")):
        padding = "same"
    elif None in padding:  # asymmetric (TensorFlow's SAME at stride 2)
        (top, bottom), (left, right) = pads
        padding = [top, left, bottom, right]
    layer = {"op": "conv2d", "out_channels": int(k), "kernel_size": compact([kh, kw]), "stride": compact(stride),
             "padding": padding if padding == "same" or len(padding) == 4 else compact(padding),
             "dilation": compact(dilation),
             "groups": int(a.get("group", 1)), "bias": bias is not None}
    weights = {"weight": w} if bias is None else {"weight": w, "bias": float_weight(bias, "bias").reshape(-1)}
    imp.add_layer(node, layer, [x], weights)




class Conv2d(Layer):
    """`nn.Conv2d`: a 2-D convolution, grouped or depthwise, with an optional fused activation."""
    op: Literal["conv2d"]
    traits = frozenset({GEMM})
    onnx_converters = {"Conv": conv}
    examples = (
        Example({"out_channels": 4, "kernel_size": 3, "padding": 1, "activation": "relu"}),
        Example({"out_channels": 6, "kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 0], "dilation": [1, 2],
                 "groups": 3, "bias": False}, note="rectangular, grouped"),
        Example({"out_channels": 3, "kernel_size": 3, "stride": [2, 1], "padding": 1, "groups": 3},
                note="depthwise, rectangular stride"),
        Example({"out_channels": 5, "kernel_size": 4, "padding": "same", "dilation": 2, "activation": "silu"},
                inputs=((2, 8, 7),), note="same padding, even kernel"),
        Example({"out_channels": 8, "kernel_size": 1, "stride": 2}, note="1x1, strided"),
        Example({"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": [0, 0, 1, 1]}, inputs=((3, 10, 9),),
                note="TensorFlow SAME at stride 2"),
        Example({"out_channels": 3, "kernel_size": [3, 5], "padding": [2, 0, 1, 3], "groups": 3}, note="depthwise, asymmetric"),
        Example({"out_channels": 6, "kernel_size": 1, "groups": 3}, note="1x1, grouped"),
    )
    out_channels: PositiveInt
    kernel_size: PositiveInt | Pair
    stride: PositiveInt | Pair = 1
    padding: NonNegativeInt | NonNegativePair | FourPads | Literal["same", "valid"] = Field(
        0, description='int, [h, w], [top, left, bottom, right], "same" or "valid"')
    dilation: PositiveInt | Pair = 1
    groups: PositiveInt = 1
    bias: bool = True
    activation: ActivationField | None = Field(None, description='Fused activation: a name ("relu") or an object.')

    @model_validator(mode="after")
    def _check(self):
        if self.padding == "same" and pair(self.stride) != (1, 1):
            raise invalid('padding "same" needs stride 1 (as in PyTorch); give explicit padding instead',
                          field="padding")
        if self.out_channels % self.groups:
            raise invalid(f"groups={self.groups} must divide out_channels={self.out_channels}", field="groups")
        return self

    # --- geometry -----------------------------------------------------------------------------
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right). "same" pads dilation*(k-1) in total, the smaller half first."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            (top, bottom), (left, right) = (same_pad(k, d) for k, d in zip(pair(self.kernel_size), pair(self.dilation)))
            return (top, bottom, left, right)
        if isinstance(self.padding, list) and len(self.padding) == 4:
            top, left, bottom, right = self.padding
            return (top, bottom, left, right)
        ph, pw = pair(self.padding)
        return (ph, ph, pw, pw)

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        self.expect_image(shape)
        c, h, w = shape
        if c % self.groups:
            raise self.shape_error(f"groups={self.groups} must divide the {c} input channels", field="groups")
        (kh, kw), (sh, sw), (dh, dw) = pair(self.kernel_size), pair(self.stride), pair(self.dilation)
        top, bottom, left, right = self.pads()
        ho = conv_out_size(h, kh, sh, top + bottom, dh)
        wo = conv_out_size(w, kw, sw, left + right, dw)
        if ho < 1 or wo < 1:
            raise self.shape_error(
                f"kernel {kh}x{kw} (dilation {dh}x{dw}) is larger than the padded input "
                f"{h + top + bottom}x{w + left + right} of {fmt_shape(shape)}", field="kernel_size")
        return (self.out_channels, ho, wo)

    def weight_shapes(self, in_shapes):
        c = in_shapes[0][0]
        shapes = {"weight": (self.out_channels, c // self.groups, *pair(self.kernel_size))}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def init_weights(self, shapes, rng):
        return he_init(shapes, rng)

    def flops(self, in_shapes, out_shape):
        c = in_shapes[0][0]
        kh, kw = pair(self.kernel_size)
        return 2 * int(np.prod(out_shape)) * (c // self.groups) * kh * kw

    def conv_geometry(self, in_shape: tuple, out_shape: tuple) -> ConvGeometry:
        """The geometry of this conv from its batched input and output shapes (N, C, H, W), (N, K, P, Q)."""
        (kh, kw), (sh, sw), (dh, dw) = pair(self.kernel_size), pair(self.stride), pair(self.dilation)
        top, _, left, _ = self.pads()
        n, c, h, w = in_shape
        return ConvGeometry(n, c, h, w, self.out_channels, out_shape[2], out_shape[3], kh, kw, sh, sw, top, left, dh,
                            dw, self.groups)

    # --- kernels --------------------------------------------------------------------------------
    def lower(self, low):
        weights, bias = low.weights["weight"], low.weights.get("bias")
        stored = low.stored_in_shapes[0]
        if stored != low.in_shapes[0]:  # NHWC channels padded with zeros: zero weight rows for them
            weights = np.pad(weights, [(0, 0), (0, stored[1] - low.in_shapes[0][1]), (0, 0), (0, 0)])
        geo = self.conv_geometry(stored, low.shape)
        epilogue = low.gemm_epilogue(bias, self.activation)
        depthwise = self.is_depthwise(geo.c)
        name = (f"conv{geo.kh}x{geo.kw}s{geo.sh}{'_dw' if depthwise else ''}{epilogue.tags}_"
                f"{geo.k}x{low.shape[2]}x{low.shape[3]}")
        if depthwise:  # NHWC: input and output (passes/assign_layout.py), the taps of one channel C apart
            nhwc = low.channels_last[0]
            taps = weights.reshape(geo.c, geo.taps)
            consts = [low.const("w", taps.T if nhwc else taps)]
            consts += [low.const("b", bias)] if bias is not None else []
            return [low.launch(name + low.layout_suffix, [*low.own_inputs, *consts, *epilogue.args, low.output],
                               T.depthwise, geo=geo, extra_args=[low.param(x) for x in consts[1:]] + epilogue.params,
                               epilogue=epilogue.code, channels_last=nhwc)]
        matrix = weights.reshape(geo.groups, geo.kg, -1).transpose(0, 2, 1)  # (g, C/g*KH*KW, K/g)
        return low.gemm(name, geo, matrix, bias, epilogue)

    # --- ONNX, PyTorch ----------------------------------------------------------------------------
    def to_onnx(self, ex, xs, out, shape):
        top, bottom, left, right = self.pads()
        if self.padding == "same" and pair(self.dilation) == (1, 1):
            padding = {"auto_pad": "SAME_UPPER"}  # as PyTorch exports it (ONNX Runtime has no dilated SAME_UPPER)
        else:
            padding = {"pads": [top, left, bottom, right]}
        ex.node(self.name, "Conv", [*xs, *ex.weight_inputs(self, ("weight", "bias"))], out, shape,
                kernel_shape=list(pair(self.kernel_size)), strides=list(pair(self.stride)),
                dilations=list(pair(self.dilation)), group=self.groups, **padding)

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        x = xs[0]
        if isinstance(self.padding, str):
            padding = self.padding
        else:
            top, bottom, left, right = self.pads()
            x, padding = F.pad(x, (left, right, top, bottom)), 0
        y = F.conv2d(x, weights["weight"], weights.get("bias"), pair(self.stride), padding, pair(self.dilation),
                     self.groups)
        return self.activation.torch(y) if self.activation else y

    # --- NumPy ----------------------------------------------------------------------------------
    def numpy_scratch_bytes(self, in_shapes, out_shape):
        """The im2col buffer: the whole column matrix, or a cache-sized chunk of it (at least one
        output row) when larger; with groups, the columns of every group and the batched GEMM's
        (groups, rows, K/groups) product of a chunk."""
        n, k, ho, wo = out_shape
        c, g = in_shapes[0][0], self.groups
        if self.is_depthwise(c):  # a cache-sized block of output rows (_depthwise)
            return max(CACHE_CHUNK // 8, 4 * wo * c)
        if pair(self.kernel_size) == (1, 1):  # no columns; grouped: each group's channels gathered, and the product
            return 4 * n * ho * wo * (c + k) if g > 1 else 0
        row = 4 * wo * math.prod(self.weight_shapes(in_shapes)["weight"][1:]) * g  # one output row's columns
        cols = min(n * ho * row, max(CACHE_CHUNK, row))
        return cols + (cols // row * 4 * wo * k if g > 1 else 0)

    def is_depthwise(self, in_channels: int) -> bool:
        return self.groups == in_channels == self.out_channels and self.groups > 1

    def runs_as_gemm(self, in_shapes):
        return not self.is_depthwise(in_shapes[0][0])

    def layout_partners(self, in_shapes):
        return [0] if self.is_depthwise(in_shapes[0][0]) else None  # its kernel reads and writes NCHW or NHWC

    def prepare(self, weights, in_shapes):
        w = weights["weight"]  # (K, C/g, kh, kw)
        k, cg, kh, kw = w.shape
        if self.is_depthwise(in_shapes[0][0]):
            taps = np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))  # (kh, kw, C)
        else:
            # per group, a (kh*kw*C/g, K/g) matrix whose rows follow the (kh, kw, C) column order
            g = self.groups
            taps = np.ascontiguousarray(w.reshape(g, k // g, cg, kh, kw).transpose(0, 3, 4, 2, 1)
                                        .reshape(g, kh * kw * cg, k // g))
        return {"taps": taps, "bias": weights.get("bias")}

    def run_numpy(self, xs, params, scratch: Scratch, out):
        (x,) = xs  # (N, H, W, C)
        n, h, w, c = x.shape
        (kh, kw), (sh, sw), (dh, dw) = pair(self.kernel_size), pair(self.stride), pair(self.dilation)
        _, ho, wo, _ = out.shape
        if self.is_depthwise(c):
            _depthwise(_padded_phases(x, self.pads(), (sh, sw), scratch), params["taps"], (sh, sw), (dh, dw), out,
                       scratch)
            return self._bias_and_activation(out, params)
        xp = _padded(x, self.pads(), scratch)
        if (kh, kw) == (1, 1):
            xs_ = xp[:, ::sh, ::sw][:, :ho, :wo] if (sh, sw) != (1, 1) else xp
            _gemm_groups(np.ascontiguousarray(xs_).reshape(-1, c), params["taps"], out.reshape(-1, self.out_channels),
                         scratch)
        else:
            _im2col_gemm(xp, params["taps"], (kh, kw), (sh, sw), (dh, dw), out, scratch)
        return self._bias_and_activation(out, params)

    def _bias_and_activation(self, out, params):
        if params["bias"] is not None:
            out += params["bias"]
        return apply_activation(self.activation, out) if self.activation else out


def _padded(x: np.ndarray, pads: tuple[int, int, int, int], scratch: Scratch) -> np.ndarray:
    """x zero-padded in H and W, in a reused scratch buffer (only the borders are cleared)."""
    top, bottom, left, right = pads
    if not any(pads):
        return x
    n, h, w, c = x.shape
    xp = scratch.get("pad", (n, h + top + bottom, w + left + right, c))
    xp[:, :top] = 0
    xp[:, top + h:] = 0
    xp[:, :, :left] = 0
    xp[:, :, left + w:] = 0
    xp[:, top:top + h, left:left + w] = x
    return xp


def _gemm_groups(cols: np.ndarray, taps: np.ndarray, out: np.ndarray, scratch: Scratch) -> None:
    """out (M, K) = cols (M, g*R) @ block-diagonal taps (g, R, K/g): one GEMM, or one batched GEMM
    over the groups (each group's columns gathered into a contiguous (M, R) matrix first)."""
    g, r, kg = taps.shape
    m = cols.shape[0]
    if g == 1:
        np.matmul(cols, taps[0], out=out)
        return
    grouped = scratch.get("group_cols", (g, m, r))
    np.copyto(grouped, cols.reshape(m, g, r).transpose(1, 0, 2))
    _batched_group_gemm(grouped, taps, out, scratch)


def _batched_group_gemm(grouped: np.ndarray, taps: np.ndarray, out: np.ndarray, scratch: Scratch) -> None:
    """out (M, g*K/g) = per group, grouped (g, M, R) @ taps (g, R, K/g), as one batched matmul."""
    g, m, _ = grouped.shape
    product = scratch.get("group_out", (g, m, taps.shape[2]))
    np.matmul(grouped, taps, out=product)
    np.copyto(out.reshape(m, g, -1), product.transpose(1, 0, 2))


def _im2col_gemm(xp, taps, kernel, stride, dilation, out, scratch: Scratch) -> None:
    """Dense conv of padded xp (N, Hp, Wp, C) into out (N, Ho, Wo, K). Whole samples are folded
    into one GEMM as far as the column buffer stays cache-sized (CACHE_CHUNK); a sample too big
    on its own is split by output rows."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    n, ho, wo, k = out.shape
    g, r, kg = taps.shape  # r = kh*kw*C/g
    cg = xp.shape[3] // g
    # (N, Ho, Wo, C, kh, kw) window view, transposed so each copied run is a channel vector
    win = sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(1, 2))
    win = win[:, ::sh, ::sw, :, ::dh, ::dw][:, :ho, :wo].transpose(0, 1, 2, 4, 5, 3)
    row_bytes = wo * r * g * 4  # the columns of every group
    target = min(Scratch.budget, CACHE_CHUNK)
    if ho * row_bytes <= target:
        step = max(1, target // (ho * row_bytes))
        chunks = [(b, min(n, b + step), 0, ho) for b in range(0, n, step)]
    else:
        step = max(1, target // row_bytes)
        chunks = [(b, b + 1, y, min(ho, y + step)) for b in range(n) for y in range(0, ho, step)]
    for b0, b1, y0, y1 in chunks:
        dst = out[b0:b1, y0:y1].reshape(-1, k)  # a view: chunks are whole samples or rows of one
        if g == 1:
            cols = scratch.get("cols", (b1 - b0, y1 - y0, wo, kh, kw, cg))
            np.copyto(cols, win[b0:b1, y0:y1])
            np.matmul(cols.reshape(-1, r), taps[0], out=dst)
            continue
        # the columns of every group at once, group-major: (g, rows, kh*kw*C/g), then one batched GEMM
        part = win[b0:b1, y0:y1]
        cols = scratch.get("cols", (g, b1 - b0, y1 - y0, wo, kh, kw, cg))
        np.copyto(cols, part.reshape(*part.shape[:5], g, cg).transpose(5, 0, 1, 2, 3, 4, 6))
        _batched_group_gemm(cols.reshape(g, -1, r), taps, dst, scratch)


def _padded_phases(x, pads, stride, scratch: Scratch) -> dict[tuple[int, int], np.ndarray]:
    """The zero-padded input split into its stride phases, phase (a, b) = padded[:, a::sh, b::sw],
    built straight from x (N, H, W, C): one copy, only the borders cleared."""
    (sh, sw), (top, bottom, left, right) = stride, pads
    if (sh, sw) == (1, 1):
        return {(0, 0): _padded(x, pads, scratch)}
    n, h, w, c = x.shape
    phases = {}
    for a in range(sh):
        for b in range(sw):
            (r0, r1, hr), (c0, c1, wc) = _phase_span(a, sh, top, h, h + top + bottom), \
                _phase_span(b, sw, left, w, w + left + right)
            buf = phases[a, b] = scratch.get(f"phase{a}{b}", (n, hr, wc, c))
            buf[:, :r0] = 0
            buf[:, r1:] = 0
            buf[:, :, :c0] = 0
            buf[:, :, c1:] = 0
            sy, sx = a + r0 * sh - top, b + c0 * sw - left  # first source row / column
            buf[:, r0:r1, c0:c1] = x[:, sy:sy + (r1 - r0 - 1) * sh + 1:sh, sx:sx + (c1 - c0 - 1) * sw + 1:sw]
    return phases


def _phase_span(phase: int, stride: int, pad: int, size: int, padded: int) -> tuple[int, int, int]:
    """(first, end, length) of the phase positions that fall inside the unpadded input."""
    length = cdiv(padded - phase, stride)
    first = max(0, cdiv(pad - phase, stride))
    end = min(length, (pad + size - 1 - phase) // stride + 1)
    return first, max(first, end), length


def _depthwise(phases, taps, stride, dilation, out, scratch: Scratch) -> None:
    """out[n, y, x, c] = sum over taps of xp[n, y*s + i*d, x*s + j*d, c] * taps[i, j, c], where
    phases[a, b] = xp[:, a::sh, b::sw] for the padded input xp.

    Each tap is one multiply-add over a cache-sized chunk of output rows. To keep NumPy's inner loop
    long (a row of Wo*C values instead of C), a strided input comes split into its stride phases,
    so that every tap reads whole contiguous rows; tap weights are tiled along the row."""
    (sh, sw), (dh, dw) = stride, dilation
    kh, kw, c = taps.shape
    n, ho, wo, _ = out.shape
    weights = [[np.tile(taps[i, j], wo) for j in range(kw)] for i in range(kh)]
    step = max(1, CACHE_CHUNK // 8 // (wo * c * 4))  # output rows per chunk: it stays in cache for all taps
    tmp = scratch.get("depthwise", (min(step, ho), wo * c))
    for b in range(n):
        for y0 in range(0, ho, step):
            y1 = min(ho, y0 + step)
            rows = out[b, y0:y1].reshape(y1 - y0, wo * c)
            part = tmp[:y1 - y0]
            for i in range(kh):
                for j in range(kw):
                    (y, pa), (x, pb) = divmod(i * dh, sh), divmod(j * dw, sw)  # (offset in phase, phase)
                    tap = phases[pa, pb][b, y + y0:y + y1, x:x + wo].reshape(y1 - y0, wo * c)  # rows of Wo*C
                    if i == j == 0:
                        np.multiply(tap, weights[i][j], out=rows)
                    else:
                        np.multiply(tap, weights[i][j], out=part)
                        rows += part
