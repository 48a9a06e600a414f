"""linear: `F.linear` (y = x W^T + b) on a 2-D input (N, F), plus an optional fused activation."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from .activation import ActivationField, apply_activation
from .base import Layer, PositiveInt, fmt_shape, he_init


class Linear(Layer):
    op: Literal["linear"]
    out_features: PositiveInt
    bias: bool = True
    activation: ActivationField | None = Field(None, description='Fused activation: a name ("relu") or an object.')

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        if len(shape) != 1:
            raise self.shape_error(f"linear needs a 2-D input (N,F), got {fmt_shape(shape)}; "
                                   f'add a {{"op": "flatten"}} layer before it')
        return (self.out_features,)

    def weight_shapes(self, in_shapes):
        shapes = {"weight": (self.out_features, in_shapes[0][0])}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_weights(self, shapes, rng):
        return he_init(shapes, rng)

    def flops(self, in_shapes, out_shape):
        return 2 * in_shapes[0][0] * self.out_features

    def prepare(self, weights, in_shapes):
        return {"weight_t": np.ascontiguousarray(weights["weight"].T), "bias": weights.get("bias")}  # (F, out)

    def run_numpy(self, xs, params, scratch, out):
        np.matmul(xs[0], params["weight_t"], out=out)
        if params["bias"] is not None:
            out += params["bias"]
        return apply_activation(self.activation, out) if self.activation else out
