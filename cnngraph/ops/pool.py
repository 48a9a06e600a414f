"""max_pool2d, avg_pool2d and global_avg_pool2d with PyTorch's semantics: stride defaults to the
kernel size, padding at most half the kernel, ceil_mode (the last window must start inside the
input or the left padding), and avg's count_include_pad divisor."""

from __future__ import annotations

from functools import partial
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..codegen import templates as T
from ..geometry import pool_out_size
from .base import (ANY_LAYOUT, KEEPS_LAYOUT, POOL, Example, Layer, NonNegativeInt, NonNegativePair, Pair, PositiveInt,
                   Scratch, fmt_shape, invalid, pair)
from .onnx_mapping import Unsupported, attributes, compact, plain, spatial_pads, symmetric_pad


def pool(op: str, imp, node) -> None:
    """MaxPool or AveragePool as the `op` layer (each op binds `op` with functools.partial)."""
    a = attributes(node)
    x = imp.data(node)
    if len(imp.shapes[x]) != 3:
        raise Unsupported(f"{node.op_type} needs an image input (N,C,H,W), got {fmt_shape(imp.shapes[x])}")
    if not imp.unused(node, 1):
        raise Unsupported("its second output (the indices of the maxima) is not supported")
    kernel = list(a.get("kernel_shape", []))
    if len(kernel) != 2:
        raise Unsupported(f"kernel_shape {kernel} must have 2 values (2-D pooling)")
    stride, dilation = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    if dilation != [1, 1]:
        raise Unsupported(f"dilations {dilation} are not supported (only 1)")
    ceil = bool(a.get("ceil_mode", 0))
    size = imp.shapes[x][1:]
    pads = spatial_pads(a, size, kernel, stride, dilation)
    padding = [symmetric_pad(b, e, n, k, s, 1, ceil) for (b, e), n, k, s in zip(pads, size, kernel, stride)]
    if None in padding:
        flat = [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
        raise Unsupported(f"pads {flat} are asymmetric; cnngraph pads both sides of an axis equally")
    layer = {"op": op, "kernel_size": compact(kernel), "padding": compact(padding), "ceil_mode": ceil}
    if stride != kernel:  # cnngraph's default stride is the kernel size, as in PyTorch
        layer["stride"] = compact(stride)
    if op == "avg_pool2d" and any(padding):  # without padding the divisor is the same either way
        layer["count_include_pad"] = bool(a.get("count_include_pad", 0))
    imp.add_layer(node, layer, [x])


class Pool2d(Layer):
    """What max and avg pooling share: the window geometry, the shape rule, the kernel, the export."""
    traits = frozenset({POOL, KEEPS_LAYOUT})
    kernel_size: PositiveInt | Pair
    stride: PositiveInt | Pair | None = None  # None: the kernel size, as in PyTorch
    padding: NonNegativeInt | NonNegativePair = 0
    ceil_mode: bool = False

    @model_validator(mode="after")
    def _check(self):
        for k, p in zip(pair(self.kernel_size), pair(self.padding)):
            if p > k // 2:
                raise invalid(f"padding {p} must be at most half the kernel size {k} (as in PyTorch)",
                              field="padding")
        return self

    def geometry(self):
        """((kh, kw), (sh, sw), (ph, pw))."""
        kernel = pair(self.kernel_size)
        return kernel, pair(self.stride) if self.stride is not None else kernel, pair(self.padding)

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        self.expect_image(shape)
        c, h, w = shape
        (kh, kw), (sh, sw), (ph, pw) = self.geometry()
        ho, wo = pool_out_size(h, kh, sh, ph, self.ceil_mode), pool_out_size(w, kw, sw, pw, self.ceil_mode)
        if ho < 1 or wo < 1:
            raise self.shape_error(f"kernel {kh}x{kw} is larger than the padded input "
                                   f"{h + 2 * ph}x{w + 2 * pw} of {fmt_shape(shape)}", field="kernel_size")
        return (c, ho, wo)

    def flops(self, in_shapes, out_shape):
        kh, kw = pair(self.kernel_size)
        return int(np.prod(out_shape)) * kh * kw

    def lower(self, low):
        (kh, kw), (sh, sw), (ph, pw) = self.geometry()
        kind = self.op.removesuffix("_pool2d")
        n, c, h, w = low.in_shapes[0]
        nhwc = low.channels_last[0]
        return low.simple(f"{kind}pool{kh}x{kw}s{sh}_{low.sample_dims()}{low.layout_suffix}", T.pool, kind=kind,
                          n=n, c=c, h=h, w=w, p=low.shape[2], q=low.shape[3], kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw,
                          count_include_pad=getattr(self, "count_include_pad", True), channels_last=nhwc)

    def to_onnx(self, ex, xs, out, shape):
        (kh, kw), stride, (ph, pw) = self.geometry()
        attrs = dict(kernel_shape=[kh, kw], strides=list(stride), pads=[ph, pw, ph, pw], ceil_mode=int(self.ceil_mode))
        if self.op == "avg_pool2d":
            attrs["count_include_pad"] = int(self.count_include_pad)
        ex.node(self.name, "MaxPool" if self.op == "max_pool2d" else "AveragePool", xs, out, shape, **attrs)

    def numpy_scratch_bytes(self, in_shapes, out_shape):
        """`_window_sweep`'s padded copy of the input (when a window leaves it) and its rows."""
        (c, h, w), (n, _, ho, wo) = in_shapes[0], out_shape
        (kh, kw), (sh, sw), (ph, pw) = self.geometry()
        hn, wn = (ho - 1) * sh + kh, (wo - 1) * sw + kw
        padded = 0 if (ph, pw) == (0, 0) and hn <= h and wn <= w else n * hn * wn * c
        return 4 * (padded + n * hn * wo * c)

    def _window_sweep(self, x: np.ndarray, fill: float, combine, scratch: Scratch, out: np.ndarray) -> np.ndarray:
        """Combine the kh*kw strided taps of x (N, H, W, C), padded with `fill`, into out (N, Ho, Wo, C)."""
        n, h, w, c = x.shape
        _, ho, wo, _ = out.shape
        (kh, kw), (sh, sw), (ph, pw) = self.geometry()
        hn, wn = (ho - 1) * sh + kh, (wo - 1) * sw + kw  # rows/cols the windows touch
        if (ph, pw) == (0, 0) and hn <= h and wn <= w:
            xp = x  # every window lies inside the input: read the taps straight from it
        else:
            xp = scratch.get("pool", (n, hn, wn, c))
            xp.fill(fill)
            hc, wc = min(h, hn - ph), min(w, wn - pw)
            xp[:, ph:ph + hc, pw:pw + wc] = x[:, :hc, :wc]
        # separable: combine along W into rows (N, Hn, Wo, C), then along H: kh + kw passes, not kh * kw
        rows = scratch.get("pool_rows", (n, hn, wo, c))
        np.copyto(rows, xp[:, :hn, 0:sw * (wo - 1) + 1:sw])
        for j in range(1, kw):
            combine(rows, xp[:, :hn, j:j + sw * (wo - 1) + 1:sw], out=rows)
        np.copyto(out, rows[:, 0:sh * (ho - 1) + 1:sh])
        for i in range(1, kh):
            combine(out, rows[:, i:i + sh * (ho - 1) + 1:sh], out=out)
        return out


POOL_EXAMPLES = (
    Example({"kernel_size": 2}),
    Example({"kernel_size": 3, "stride": 2, "padding": 1}, inputs=((3, 10, 11),), note="overlapping, padded"),
    Example({"kernel_size": [3, 2], "stride": [1, 2], "padding": [1, 0], "ceil_mode": True}, inputs=((2, 7, 9),),
            note="rectangular, ceil_mode"),
    Example({"kernel_size": 3, "padding": 1}, inputs=((2, 9, 9),), note="padded, the last window inside"),
)


class MaxPool2d(Pool2d):
    """`nn.MaxPool2d`: the maximum of each window (NaN wins, as in PyTorch)."""
    op: Literal["max_pool2d"]
    onnx_converters = {"MaxPool": partial(pool, "max_pool2d")}
    examples = POOL_EXAMPLES

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        kernel, stride, padding = self.geometry()
        return F.max_pool2d(xs[0], kernel, stride, padding, ceil_mode=self.ceil_mode)

    def run_numpy(self, xs, params, scratch, out):
        return self._window_sweep(xs[0], -np.inf, np.maximum, scratch, out)


class AvgPool2d(Pool2d):
    """`nn.AvgPool2d`: the mean of each window; `count_include_pad` says whether padding counts in the divisor."""
    op: Literal["avg_pool2d"]
    count_include_pad: bool = True
    onnx_converters = {"AveragePool": partial(pool, "avg_pool2d")}
    examples = (*POOL_EXAMPLES, Example({"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
                                        inputs=((3, 8, 9),), note="padding not counted"))

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        kernel, stride, padding = self.geometry()
        return F.avg_pool2d(xs[0], kernel, stride, padding, ceil_mode=self.ceil_mode,
                            count_include_pad=self.count_include_pad)

    def _divisor(self, size: int, out: int, kernel: int, stride: int, pad: int) -> np.ndarray:
        """Window lengths along one axis, as PyTorch counts them."""
        start = np.arange(out) * stride - pad
        end = np.minimum(start + kernel, size + pad)
        if self.count_include_pad:
            return (end - start).astype(np.float32)
        return (np.minimum(end, size) - np.maximum(start, 0)).astype(np.float32)

    def run_numpy(self, xs, params, scratch, out):
        x = xs[0]
        self._window_sweep(x, 0.0, np.add, scratch, out)
        (kh, kw), (sh, sw), (ph, pw) = self.geometry()
        dh = self._divisor(x.shape[1], out.shape[1], kh, sh, ph)
        dw = self._divisor(x.shape[2], out.shape[2], kw, sw, pw)
        out /= (dh[:, None] * dw[None, :])[:, :, None]
        return out


def spatial_mean_numpy(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The mean over H and W of an (N, H, W, C) tensor into `out` (any shape of N x C values),
    summed in float64: the float32 sum of large values (a mean of 3e37s) would overflow to inf
    where the mean itself is finite. The temporaries are N x C values."""
    np.copyto(out, np.mean(x, axis=(1, 2), dtype=np.float64).reshape(out.shape), casting="same_kind")
    return out


def spatial_mean(low):
    """The kernel of a mean over H and W: one thread per (sample, channel); over an NHWC input
    consecutive threads read consecutive channels of a pixel."""
    n, c, h, w = low.in_shapes[0]
    nhwc = low.channels_last[0]  # rows of H*W values c apart, else contiguous
    return low.simple(f"global_avgpool_{c}x{h}x{w}{low.layout_suffix}", T.reduce_rows, kind="mean",
                      outer=n if nhwc else n * c, length=h * w, inner=c if nhwc else 1)


class GlobalAvgPool2d(Layer):
    """The mean over H and W of each channel, (N, C, H, W) -> (N, C, 1, 1) (`nn.AdaptiveAvgPool2d(1)`)."""
    op: Literal["global_avg_pool2d"]
    traits = frozenset({ANY_LAYOUT})
    onnx_converters = {"GlobalAveragePool": partial(plain, "global_avg_pool2d")}
    examples = (Example({}),)

    def lower(self, low):
        return spatial_mean(low)

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, "GlobalAveragePool", xs, out, shape)

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        return F.adaptive_avg_pool2d(xs[0], 1)

    def infer_shape(self, in_shapes):
        self.expect_image(in_shapes[0])
        return (in_shapes[0][0], 1, 1)

    def flops(self, in_shapes, out_shape):
        return int(np.prod(in_shapes[0]))

    def run_numpy(self, xs, params, scratch, out):
        return spatial_mean_numpy(xs[0], out)


def reduce_mean(imp, node):
    """ReduceMean over H and W: `x.mean((2, 3), keepdim=...)`."""
    x = imp.data(node)
    a = attributes(node)
    axes = imp.numbers(node, 1, "axes", optional=True) if imp.opset >= 18 else np.asarray(a.get("axes", []))
    rank = len(imp.shapes[x]) + 1
    axes = sorted(int(v) % rank for v in np.asarray(axes).reshape(-1)) if axes is not None else []
    if rank != 4 or axes != [2, 3]:
        raise Unsupported(f"ReduceMean over axes {axes or 'all'} of {fmt_shape(imp.shapes[x])}: only the mean over "
                          "H and W (axes 2 and 3) of an (N,C,H,W) tensor is supported")
    imp.add_layer(node, {"op": "mean", "keepdim": bool(a.get("keepdims", 1))}, [x])


class Mean(Layer):
    """`x.mean(dim, keepdim)` over the spatial axes of an image: a global average pool, (C, 1, 1) with
    keepdim, (C,) without."""
    op: Literal["mean"]
    traits = frozenset({ANY_LAYOUT})
    dim: list[int] = Field([2, 3], description="The axes averaged: H and W, (2, 3) or (-2, -1).")
    keepdim: bool = False
    onnx_converters = {"ReduceMean": reduce_mean}
    examples = (Example({}), Example({"keepdim": True, "dim": [-1, -2]}, inputs=((4, 3, 5),)))

    @model_validator(mode="after")
    def _check(self):
        if sorted(d % 4 for d in self.dim) != [2, 3] or len(set(self.dim)) != 2:
            raise invalid(f"dim {self.dim}: only the mean over H and W, [2, 3] (or [-2, -1]), is supported",
                          field="dim")
        return self

    def infer_shape(self, in_shapes):
        self.expect_image(in_shapes[0])
        c = in_shapes[0][0]
        return (c, 1, 1) if self.keepdim else (c,)

    def flops(self, in_shapes, out_shape):
        return int(np.prod(in_shapes[0]))

    def run_numpy(self, xs, params, scratch, out):
        return spatial_mean_numpy(xs[0], out)

    def lower(self, low):
        return spatial_mean(low)

    def to_onnx(self, ex, xs, out, shape):
        if ex.opset >= 18:  # axes became an input
            ex.node(self.name, "ReduceMean", [*xs, ex.const(f"{self.name}:axes", [2, 3], "int64")], out, shape,
                    keepdims=int(self.keepdim))
        else:
            ex.node(self.name, "ReduceMean", xs, out, shape, axes=[2, 3], keepdims=int(self.keepdim))

    def torch_reference(self, xs, weights):
        return xs[0].mean(dim=tuple(self.dim), keepdim=self.keepdim)
