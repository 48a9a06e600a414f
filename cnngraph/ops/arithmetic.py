"""Arithmetic between tensors with broadcasting (mul, sub, div), and `scale`, a multiplication by a
learned per-channel tensor.

`mul` is how squeeze-excitation applies its gate: x (C, H, W) times s (C, 1, 1), one gate value per
sample and channel. `scale` is ConvNeXt's layer scale: x times a learned (C, 1, 1) parameter.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, ClassVar, Literal

import numpy as np

from .base import ELEMENTWISE, Example, Layer, Shape, fmt_shape
from .onnx_mapping import Unsupported, float_weight, writing

def broadcast_shape(shapes: list[Shape]) -> Shape | None:
    """NumPy's broadcast of per-sample shapes of equal rank (each dim equal, or 1), or None."""
    if len({len(s) for s in shapes}) != 1:
        return None
    out = []
    for dims in zip(*shapes):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def broadcast_index(shape: Shape, out: Shape, idx: str = "idx") -> str:
    """The C index into a tensor of batched `shape` that broadcasts to batched `out`, for the
    element at flat index `idx` of `out`."""
    if tuple(shape) == tuple(out):
        return idx
    terms, out_stride, in_stride = [], 1, 1
    for size, total in reversed(list(zip(shape, out))):
        if size == total and total > 1:
            coordinate = f"({idx} / {out_stride}) % {total}" if out_stride > 1 else f"{idx} % {total}"
            terms.append(f"({coordinate}) * {in_stride}" if in_stride > 1 else f"({coordinate})")
        out_stride *= total
        in_stride *= size
    return " + ".join(reversed(terms)) or "0"


class Binary(Layer):
    """What mul, sub and div share: two inputs broadcast NumPy-style (a (C, 1, 1) or (1, 1, 1)
    operand against (C, H, W), say), the kernel, the ONNX forms."""
    arity = (2, 2)
    traits = frozenset({ELEMENTWISE})
    symbol: ClassVar[str] = "*"
    onnx_op: ClassVar[str] = "Mul"
    ufunc: ClassVar[Callable]        # NumPy's, with out=
    operation: ClassVar[Callable]    # Python's operator, for PyTorch tensors
    examples = (Example({}, inputs=((4, 5, 3), (4, 5, 3))),
                Example({}, inputs=((4, 5, 3), (4, 1, 1)), note="squeeze-excitation gate"),
                Example({}, inputs=((1, 1, 1), (3, 4, 6)), note="scalar tensor first"),
                Example({}, inputs=((1, 5, 1), (3, 1, 6)), note="both broadcast"),
                Example({}, inputs=((7,), (1,)), note="vectors"))

    def infer_shape(self, in_shapes):
        out = broadcast_shape(in_shapes)
        if out is None:
            got = " and ".join(fmt_shape(s) for s in in_shapes)
            raise self.shape_error(f"{self.op} needs shapes that broadcast (each dim equal, or 1, at equal rank), "
                                   f"got {got}", field="inputs")
        return out

    def run_numpy(self, xs, params, scratch, out):
        return self.ufunc(xs[0], xs[1], out=out)

    def lower(self, low):
        a, b = low.operand_index(0), low.operand_index(1)
        return low.elementwise(self.op, f"v = LOAD(x0[{a}]) {self.symbol} LOAD(x1[{b}]);", inputs=2)

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, self.onnx_op, xs, out, shape)

    def torch_reference(self, xs, weights):
        return self.operation(xs[0], xs[1])


def binary(imp, node):
    """Mul, Sub or Div. Of two tensors the network computes: the op. Of a tensor and a constant: a
    multiplication (or a division) by a per-channel or scalar constant is a `scale` layer."""
    op = node.op_type.lower()
    a, b = node.input[0], node.input[1] if len(node.input) > 1 else ""
    if imp.is_const(a) and imp.is_const(b):
        raise Unsupported("both operands are constants (shape arithmetic the importer could not evaluate)")
    if not imp.is_const(a) and not imp.is_const(b):
        imp.add_layer(node, {"op": op}, [imp.data(node, 0), imp.data(node, 1)])
        return
    constant_first = imp.is_const(a)
    operand = a if constant_first else b
    x, value = imp.tensor(b if constant_first else a), float_weight(imp.consts[operand], "operand")
    if op == "sub" or (op == "div" and constant_first):
        raise Unsupported(f"{node.op_type} with a constant operand has no cnngraph layer (only multiplying or "
                          "dividing a tensor by a constant is)")
    factor = 1 / value.astype(np.float64) if op == "div" else value
    view = imp.is_channels_last(x)
    if op == "mul" and imp.is_parameter(operand):  # `self.layer_scale * x`: the layer takes the parameter's name,
        node = writing(node, node.output[0], name=operand)  # so its weight keeps its state_dict key
    imp.add_layer(node, {"op": "scale"}, [x], {"": channel_factor(factor, imp.shapes[x], view)}, channels_last=view)


def channel_factor(value: np.ndarray, shape: Shape, channels_last: bool = False) -> np.ndarray:
    """A constant that multiplies a tensor of per-sample `shape` (ONNX broadcasting: aligned to the
    right of (N, *shape), or of (N, H, W, C) for a channels-last view) as a `scale` weight, one value
    per channel; or Unsupported."""
    per_channel = (shape[0],) + (1,) * (len(shape) - 1)
    rank = len(shape) + 1
    if value.ndim <= rank:
        aligned = value.reshape((1,) * (rank - value.ndim) + value.shape)
        if aligned.size == 1:
            return np.full(per_channel, float(aligned.reshape(())), np.float32)
        if channels_last:
            aligned = np.moveaxis(aligned, -1, 1)  # (1, H, W, C) -> (1, C, H, W)
        if aligned.shape[1:] == per_channel and aligned.shape[0] == 1:
            return aligned[0].astype(np.float32)
    raise Unsupported(f"multiplying {fmt_shape(shape)} by a constant of shape {list(value.shape)} has no cnngraph "
                      f"layer; a scalar or a constant per channel, {list((1, *per_channel))}, is a scale layer")


class Mul(Binary):
    """Elementwise product of two inputs, broadcast NumPy-style (a squeeze-excitation gate, say)."""
    op: Literal["mul"]
    onnx_converters = {"Mul": binary}
    ufunc, operation = staticmethod(np.multiply), staticmethod(operator.mul)


class Sub(Binary):
    """Elementwise difference of two inputs, the first minus the second, broadcast NumPy-style."""
    op: Literal["sub"]
    symbol, onnx_op = "-", "Sub"
    onnx_converters = {"Sub": binary}
    ufunc, operation = staticmethod(np.subtract), staticmethod(operator.sub)


class Div(Binary):
    """Elementwise quotient of two inputs, the first over the second, broadcast NumPy-style."""
    op: Literal["div"]
    symbol, onnx_op = "/", "Div"
    onnx_converters = {"Div": binary}
    ufunc, operation = staticmethod(np.divide), staticmethod(operator.truediv)


class Scale(Layer):
    """x times a learned per-channel tensor: ConvNeXt's layer scale (`layer_scale * x`). Its weight
    is keyed by the layer's own name, as a parameter attribute of a PyTorch module is
    (torchvision's `features.1.0.layer_scale`), and has the shape that broadcasts in PyTorch: (C, 1, 1)
    for images, (F,) for vectors. Folds into the weights of a conv before it."""
    op: Literal["scale"]
    traits = frozenset({ELEMENTWISE})
    examples = (Example({}), Example({}, inputs=((6,),)))

    def weight_shapes(self, in_shapes):
        shape = in_shapes[0]
        return {"": (shape[0],) + (1,) * (len(shape) - 1)}

    def init_weights(self, shapes, rng):
        return {"": rng.uniform(0.5, 1.5, shapes[""])}

    def channel_affine(self, weights):
        factor = weights[""].reshape(-1).astype(np.float64)
        return factor, np.zeros_like(factor)

    def prepare(self, weights, in_shapes):
        return {"factor": weights[""].reshape(-1)}  # per channel on the last axis of the backend's layout

    def run_numpy(self, xs, params, scratch, out):
        return np.multiply(xs[0], params["factor"], out=out)

    def lower(self, low):
        return low.elementwise("scale", "v = LOAD(x0[idx]) * factor[k];", consts=[low.const("factor", low.weights[""])])

    def to_onnx(self, ex, xs, out, shape):
        # the weight's key is the layer's name, which in ONNX names the layer's output tensor
        ex.node(self.name, "Mul", [*xs, ex.const(f"{self.name}:scale", ex.weights[self.name])], out, shape)

    def torch_reference(self, xs, weights):
        return xs[0] * weights[""]

    def flops(self, in_shapes, out_shape):
        return math.prod(out_shape)
