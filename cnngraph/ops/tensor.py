"""Layout and combination ops: flatten, dropout, add, concat, softmax, upsample2d."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from .base import Int64, Layer, Pair, PositiveInt, fmt_shape, pair


class Flatten(Layer):
    """`torch.flatten(x, 1)`: (N, C, H, W) -> (N, C*H*W), in PyTorch's (C, H, W) order."""
    op: Literal["flatten"]

    def infer_shape(self, in_shapes):
        return (math.prod(in_shapes[0]),)  # exact: np.prod would wrap around past 2**63

    def flops(self, in_shapes, out_shape):
        return 0

    def run_numpy(self, xs, params, scratch, out):
        x = xs[0]
        if x.ndim == 4:  # channels-last in the backend: restore (C, H, W) order first
            x = x.transpose(0, 3, 1, 2)
        np.copyto(out.reshape(x.shape), x)
        return out


class Dropout(Layer):
    """Identity at inference; `p` is kept so specs exported from training code load unchanged."""
    op: Literal["dropout"]
    p: float = Field(0.5, ge=0, lt=1, allow_inf_nan=False)

    def flops(self, in_shapes, out_shape):
        return 0

    def run_numpy(self, xs, params, scratch, out):
        np.copyto(out, xs[0])
        return out


class Add(Layer):
    """Elementwise sum of 2+ inputs of one shape (residual connections)."""
    op: Literal["add"]
    arity = (2, None)

    def infer_shape(self, in_shapes):
        if any(s != in_shapes[0] for s in in_shapes):
            got = " and ".join(fmt_shape(s) for s in in_shapes)
            raise self.shape_error(f"add needs equal shapes, got {got}", field="inputs")
        return in_shapes[0]

    def flops(self, in_shapes, out_shape):
        return (len(in_shapes) - 1) * int(np.prod(out_shape))

    def run_numpy(self, xs, params, scratch, out):
        np.add(xs[0], xs[1], out=out)
        for x in xs[2:]:
            out += x
        return out


class Concat(Layer):
    """Concatenation of 2+ inputs along channels (axis 1)."""
    op: Literal["concat"]
    arity = (2, None)

    def infer_shape(self, in_shapes):
        rest = {(len(s), s[1:]) for s in in_shapes}
        if len(rest) != 1:
            got = " and ".join(fmt_shape(s) for s in in_shapes)
            raise self.shape_error(f"concat needs inputs that differ only in channels, got {got}", field="inputs")
        return (sum(s[0] for s in in_shapes), *in_shapes[0][1:])

    def flops(self, in_shapes, out_shape):
        return 0

    def run_numpy(self, xs, params, scratch, out):
        return np.concatenate(xs, axis=-1, out=out)  # channels are the last axis in the backend (or F for 2-D)


class Softmax(Layer):
    op: Literal["softmax"]
    axis: Int64 = Field(1, description="Axis of the (N, C, H, W) or (N, F) tensor; 1 is the channels.")

    def infer_shape(self, in_shapes):
        rank = len(in_shapes[0]) + 1
        if not (1 <= self.axis < rank or -rank < self.axis < 0):
            raise self.shape_error(f"axis {self.axis} is out of range for {fmt_shape(in_shapes[0])}; "
                                   f"valid: 1..{rank - 1} (the batch axis 0 is not allowed)", field="axis")
        return in_shapes[0]

    def flops(self, in_shapes, out_shape):
        return 4 * int(np.prod(out_shape))

    def run_numpy(self, xs, params, scratch, out):
        x = xs[0]
        axis = self.axis % x.ndim
        if x.ndim == 4:
            axis = (0, 3, 1, 2)[axis]  # NCHW axis -> channels-last axis
        np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= out.sum(axis=axis, keepdims=True)
        return out


class Upsample2d(Layer):
    op: Literal["upsample2d"]
    scale_factor: PositiveInt | Pair
    mode: Literal["nearest"] = "nearest"

    def infer_shape(self, in_shapes):
        self.expect_image(in_shapes[0])
        c, h, w = in_shapes[0]
        sh, sw = pair(self.scale_factor)
        return (c, h * sh, w * sw)

    def flops(self, in_shapes, out_shape):
        return 0

    def run_numpy(self, xs, params, scratch, out):
        sh, sw = pair(self.scale_factor)
        n, h, w, c = xs[0].shape
        out.reshape(n, h, sh, w, sw, c)[...] = xs[0][:, :, None, :, None, :]
        return out
