"""batch_norm2d at inference: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from .base import ELEMENTWISE, Example, Float32, Layer
from .onnx_mapping import Unsupported, attributes, float_weight, nice

KEYS = ("weight", "bias", "running_mean", "running_var")  # its weights, in PyTorch's and ONNX's order


def batch_norm_scale_shift(weights: dict[str, np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel (scale, shift) the layer reduces to, computed in float64."""
    scale = weights["weight"].astype(np.float64) / np.sqrt(weights["running_var"].astype(np.float64) + eps)
    shift = weights["bias"].astype(np.float64) - weights["running_mean"].astype(np.float64) * scale
    return scale, shift


def batch_norm(imp, node):
    a = attributes(node)
    if a.get("training_mode", 0) or not all(imp.unused(node, i) for i in range(1, len(node.output))):
        raise Unsupported("training mode (updated running statistics) is not supported; export in eval mode")
    weights = {key: float_weight(imp.value(node, i + 1, key), key).reshape(-1) for i, key in enumerate(KEYS)}
    layer = {"op": "batch_norm2d", "eps": nice(a.get("epsilon", 1e-5))}
    imp.add_layer(node, layer, [imp.data(node)], weights)


class BatchNorm2d(Layer):
    op: Literal["batch_norm2d"]
    eps: Float32 = Field(1e-5, gt=0)
    traits = frozenset({ELEMENTWISE})
    onnx_converters = {"BatchNormalization": batch_norm}
    examples = (Example({}), Example({"eps": 0.1}, inputs=((5, 4, 3),)))

    def infer_shape(self, in_shapes):
        self.expect_image(in_shapes[0])
        return in_shapes[0]

    def weight_shapes(self, in_shapes):
        return {key: (in_shapes[0][0],) for key in KEYS}

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

    def lower(self, low):
        scale, shift = batch_norm_scale_shift(low.weights, self.eps)
        return low.elementwise("batchnorm", "v = x0[idx] * scale[k] + shift[k];",
                               consts=[low.const("scale", scale), low.const("shift", shift)])

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, "BatchNormalization", [*xs, *ex.weight_inputs(self, KEYS)], out, shape,
                epsilon=float(self.eps))

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        return F.batch_norm(xs[0], weights["running_mean"], weights["running_var"], weights["weight"],
                            weights["bias"], training=False, eps=self.eps)
