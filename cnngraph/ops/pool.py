"""max_pool2d, avg_pool2d and global_avg_pool2d with PyTorch's semantics: stride defaults to the
kernel size, padding at most half the kernel, ceil_mode (the last window must start inside the
input or the left padding), and avg's count_include_pad divisor."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import model_validator

from .base import Layer, NonNegativeInt, NonNegativePair, Pair, PositiveInt, Scratch, fmt_shape, invalid, pair


def pool_out_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # PyTorch: the last window must start inside the input or the left padding
    return out


class Pool2d(Layer):
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


class MaxPool2d(Pool2d):
    op: Literal["max_pool2d"]

    def run_numpy(self, xs, params, scratch, out):
        return self._window_sweep(xs[0], -np.inf, np.maximum, scratch, out)


class AvgPool2d(Pool2d):
    op: Literal["avg_pool2d"]
    count_include_pad: bool = True

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


class GlobalAvgPool2d(Layer):
    op: Literal["global_avg_pool2d"]

    def infer_shape(self, in_shapes):
        self.expect_image(in_shapes[0])
        return (in_shapes[0][0], 1, 1)

    def flops(self, in_shapes, out_shape):
        return int(np.prod(in_shapes[0]))

    def run_numpy(self, xs, params, scratch, out):
        return np.mean(xs[0], axis=(1, 2), keepdims=True, dtype=np.float32, out=out)
