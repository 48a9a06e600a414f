"""linear: `F.linear` (y = x W^T + b) on a 2-D input (N, F), plus an optional fused activation."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..geometry import ConvGeometry
from .activation import ActivationField, apply_activation
from .base import GEMM, Example, Layer, PositiveInt, fmt_shape, he_init
from .onnx_mapping import Unsupported, attributes, float_weight, other_input


def linear_bias(bias: np.ndarray, out_features: int) -> np.ndarray:
    """A bias that broadcasts over (N, out_features) as a (out_features,) vector."""
    bias = float_weight(bias, "bias")
    if bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1) or bias.size not in (1, out_features):
        raise Unsupported(f"its bias has shape {list(bias.shape)}; a linear layer's bias is ({out_features},)")
    return np.broadcast_to(bias.reshape(-1), (out_features,))


def gemm(imp, node):
    """alpha * x @ op(B) + beta * C, with x the data and B, C constants: a linear layer."""
    a = attributes(node)
    if a.get("transA", 0):
        raise Unsupported("transA=1 (a transposed input) is not supported")
    x = imp.data(node)
    b = float_weight(imp.value(node, 1, "B (weight)"), "weight")
    if b.ndim != 2:
        raise Unsupported(f"its weight must be a matrix, got shape {list(b.shape)}")
    weight = (b if a.get("transB", 0) else b.T) * np.float32(a.get("alpha", 1.0))
    c = imp.value(node, 2, "C (bias)", optional=True)
    weights = {"weight": weight}
    if c is not None:
        weights["bias"] = linear_bias(c, weight.shape[0]) * np.float32(a.get("beta", 1.0))
    imp.add_layer(node, {"op": "linear", "out_features": int(weight.shape[0]), "bias": c is not None}, [x], weights)


def matmul_layer(imp, matmul, last, bias: np.ndarray | None) -> None:
    x = imp.data(matmul)
    w = float_weight(imp.value(matmul, 1, "second (weight)"), "weight")
    if w.ndim != 2:
        raise Unsupported(f"only x @ W with a constant matrix W is supported, got W of shape {list(w.shape)}")
    weights = {"weight": w.T}
    if bias is not None:
        weights["bias"] = linear_bias(bias, w.shape[1])
    if imp.is_channels_last(x):  # a Linear over the channels of each pixel (ConvNeXt's): a 1x1 conv
        weights["weight"] = w.T[:, :, None, None]
        layer = {"op": "conv2d", "out_channels": int(w.shape[1]), "kernel_size": 1, "bias": bias is not None}
        imp.add_layer(last, layer, [x], weights, channels_last=True)
        return
    imp.add_layer(last, {"op": "linear", "out_features": int(w.shape[1]), "bias": bias is not None}, [x], weights)


def matmul(imp, node):
    matmul_layer(imp, node, node, None)


def match_linear_bias(imp, matmul):
    """MatMul(x, W) + b: PyTorch's export of a Linear as matrix product and bias."""
    add = imp.only_consumer(matmul.output[0], "Add")
    bias_name = other_input(add, matmul.output[0]) if add is not None else None
    if bias_name is None or not imp.is_const(bias_name):
        return None
    return [matmul, add], lambda imp, node: matmul_layer(imp, matmul, node, imp.consts[bias_name])


class Linear(Layer):
    """`nn.Linear` on a (N, F) input: x @ W.T + b, with an optional fused activation."""
    op: Literal["linear"]
    traits = frozenset({GEMM})
    onnx_converters = {"Gemm": gemm, "MatMul": matmul}
    onnx_patterns = {"MatMul": match_linear_bias}
    examples = (Example({"out_features": 5, "activation": "tanh"}, inputs=((7,),)),
                Example({"out_features": 3, "bias": False}, inputs=((12,),)))
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

    def lower(self, low):
        (n, f), k = low.in_shapes[0], self.out_features
        bias = low.weights.get("bias")
        epilogue = low.gemm_epilogue(bias, self.activation)
        geo = ConvGeometry(n, f, 1, 1, k, 1, 1)  # a 1x1 conv on a 1x1 image
        return low.gemm(f"linear{epilogue.tags}_{f}x{k}", geo, low.weights["weight"].T[None], bias, epilogue)

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, "Gemm", [*xs, *ex.weight_inputs(self, ("weight", "bias"))], out, shape, transB=1)

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        y = F.linear(xs[0], weights["weight"], weights.get("bias"))
        return self.activation.torch(y) if self.activation else y

    def prepare(self, weights, in_shapes):
        return {"weight_t": np.ascontiguousarray(weights["weight"].T), "bias": weights.get("bias")}  # (F, out)

    def run_numpy(self, xs, params, scratch, out):
        np.matmul(xs[0], params["weight_t"], out=out)
        if params["bias"] is not None:
            out += params["bias"]
        return apply_activation(self.activation, out) if self.activation else out
