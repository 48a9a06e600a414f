"""batch_norm2d at inference: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from .base import Float32, Layer


def batch_norm_scale_shift(weights: dict[str, np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel (scale, shift) the layer reduces to, computed in float64."""
    scale = weights["weight"].astype(np.float64) / np.sqrt(weights["running_var"].astype(np.float64) + eps)
    shift = weights["bias"].astype(np.float64) - weights["running_mean"].astype(np.float64) * scale
    return scale, shift


class BatchNorm2d(Layer):
    op: Literal["batch_norm2d"]
    eps: Float32 = Field(1e-5, gt=0)

    def infer_shape(self, in_shapes):
        self.expect_image(in_shapes[0])
        return in_shapes[0]

    def weight_shapes(self, in_shapes):
        c = (in_shapes[0][0],)
        return {"weight": c, "bias": c, "running_mean": c, "running_var": c}

    def init_weights(self, shapes, rng):
        c = shapes["weight"]
        return {"weight": rng.uniform(0.5, 1.5, c), "bias": rng.uniform(-0.2, 0.2, c),
                "running_mean": rng.uniform(-0.2, 0.2, c), "running_var": rng.uniform(0.5, 1.5, c)}

    def flops(self, in_shapes, out_shape):
        return 2 * int(np.prod(out_shape))

    def prepare(self, weights, in_shapes):
        scale, shift = batch_norm_scale_shift(weights, self.eps)
        return {"scale": scale.astype(np.float32), "shift": shift.astype(np.float32)}

    def run_numpy(self, xs, params, scratch, out):
        np.multiply(xs[0], params["scale"], out=out)  # (N, H, W, C): per-channel on the last axis
        out += params["shift"]
        return out
