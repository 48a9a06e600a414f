"""Layout and combination ops: flatten, dropout, add, concat, softmax, upsample2d."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from ..codegen import templates as T
from .base import INT64_MAX, ELEMENTWISE, KEEPS_LAYOUT, Example, Int64, Layer, Pair, PositiveInt, fmt_shape, invalid, pair
from .onnx_mapping import BATCH, Unsupported, attributes, compact, nice, scalar


def flatten(imp, node):
    x = imp.data(node)
    axis = attributes(node).get("axis", 1)
    if axis % (len(imp.shapes[x]) + 1) != 1:
        raise Unsupported(f"axis {axis}: only Flatten(axis=1), keeping the batch, is supported")
    imp.add_layer(node, {"op": "flatten"}, [x])


def reshape(imp, node):
    """A reshape that keeps the batch: to (N, -1) (PyTorch's `x.view(x.size(0), -1)`) a flatten, to
    another (N, F) or (N, C, H, W) shape (`s.view(b, c, 1, 1)`) a reshape layer."""
    x = imp.data(node)
    target = [t if t is BATCH else int(t) for t in imp.value(node, 1, "shape").reshape(-1)]
    copies = not attributes(node).get("allowzero", 0)  # 0 copies the input's dim
    shape = imp.shapes[x]
    rest = [shape[i - 1] if t == 0 and copies and i <= len(shape) else t for i, t in enumerate(target) if i > 0]
    features, n = math.prod(shape), target[0] if target else None
    keeps_batch = (n is BATCH or (n == 0 and copies) or (n == -1 and -1 not in rest and math.prod(rest) == features)
                   or (isinstance(n, int) and n > 0))  # a batch size fixed at export, taken on trust
    if not keeps_batch or len(rest) not in (1, 3) or BATCH in rest:
        shown = "[" + ", ".join(str(t) for t in target) + "]"
        raise Unsupported(f"only a reshape that keeps the batch, to (N, F) or (N, C, H, W), is supported; got "
                          f"target shape {shown} for input {fmt_shape(shape)}")
    if rest in ([-1], [features]):
        imp.add_layer(node, {"op": "flatten"}, [x])
    else:
        imp.add_layer(node, {"op": "reshape", "shape": rest}, [x])


def _squeezed(imp, node, shape: list) -> list:
    """`shape` (batch first) after one Unsqueeze or Squeeze node."""
    axes = imp.numbers(node, 1, "axes", optional=True) if imp.opset >= 13 else attributes(node).get("axes")
    axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    if node.op_type == "Unsqueeze":
        rank = len(shape) + len(axes or [])
        for axis in sorted(a % rank for a in axes or []):
            shape.insert(axis, 1)
        return shape
    drop = {a % len(shape) for a in axes} if axes else {i for i, d in enumerate(shape) if d == 1}
    return [d for i, d in enumerate(shape) if i not in drop]


def unsqueeze_squeeze(imp, node, chain=None):
    """Unsqueeze or Squeeze of a tensor the network computes, or a chain of them, keeping the batch:
    a reshape (`s[:, :, None, None]` is two Unsqueezes, `x.squeeze(-1).squeeze(-1)` two Squeezes)."""
    chain = chain or [node]
    if imp.is_const(chain[0].input[0]):  # a chain in shape arithmetic, matched before it was evaluated
        value = imp.consts[chain[0].input[0]]
        for step in chain:
            value = value.reshape(_squeezed(imp, step, list(value.shape)))
        imp.constant(node, value)
        return
    x = imp.data(chain[0])
    shape = [BATCH, *imp.shapes[x]]
    for step in chain:
        shape = _squeezed(imp, step, shape)
    if not shape or shape[0] is not BATCH or len(shape) - 1 not in (1, 3):
        raise Unsupported(f"{node.op_type} of {fmt_shape(imp.shapes[x])} to a shape of rank {len(shape)}: only "
                          "(N, F) and (N, C, H, W) results that keep the batch are supported")
    imp.add_layer(node, {"op": "reshape", "shape": shape[1:]}, [x])


def match_squeeze_chain(imp, first):
    """Unsqueeze/Squeeze nodes in a row, each the only reader of the one before: one reshape."""
    chain = [first]
    while (nxt := next((imp.only_consumer(chain[-1].output[0], t) for t in ("Unsqueeze", "Squeeze")
                        if imp.only_consumer(chain[-1].output[0], t)), None)) is not None:
        chain.append(nxt)
    if len(chain) < 2 or imp.is_const(first.input[0]):  # constants are folded node by node
        return None
    return chain, lambda imp, node: unsqueeze_squeeze(imp, node, chain)


class Flatten(Layer):
    """`torch.flatten(x, 1)`: (N, C, H, W) -> (N, C*H*W), in PyTorch's (C, H, W) order."""
    moves_data_only = True
    op: Literal["flatten"]
    onnx_converters = {"Flatten": flatten, "Reshape": reshape}
    examples = (Example({}),)

    def lower(self, low):
        return low.elementwise("copy", "v = LOAD(x0[idx]);")  # NCHW flatten is a plain copy

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, "Flatten", xs, out, shape, axis=1)

    def torch_reference(self, xs, weights):
        return xs[0].flatten(1)

    def infer_shape(self, in_shapes):
        return (math.prod(in_shapes[0]),)  # exact: np.prod would wrap around past 2**63

    def run_numpy(self, xs, params, scratch, out):
        x = xs[0]
        if x.ndim == 4:  # channels-last in the backend: restore (C, H, W) order first
            x = x.transpose(0, 3, 1, 2)
        np.copyto(out.reshape(x.shape), x)
        return out


def dropout(imp, node):
    """Identity at inference; the ratio is kept as the layer's p."""
    if imp.opset < 12:
        ratio = attributes(node).get("ratio", 0.5)
    else:
        ratio = scalar(imp.value(node, 1, "ratio", optional=True), 0.5)
        if scalar(imp.value(node, 2, "training_mode", optional=True), 0.0):
            raise Unsupported("training_mode=true is not supported; export in eval mode")
    if not imp.unused(node, 1):
        raise Unsupported("its second output (the mask) is not supported")
    imp.add_layer(node, {"op": "dropout", "p": nice(ratio)}, [imp.data(node)])


class Reshape(Layer):
    """`x.reshape(N, *shape)`: the same elements of each sample, in (C, H, W) order, in another shape
    of rank 1 or 3; one entry may be -1. A squeeze-excitation gate computed as a vector becomes
    (C, 1, 1) this way (`s.view(b, c, 1, 1)`)."""
    moves_data_only = True
    op: Literal["reshape"]
    shape: list[Annotated[int, Field(ge=-1, le=INT64_MAX)]] = Field(..., description="(F,) or (C, H, W); -1 once.")
    onnx_converters = {"Unsqueeze": unsqueeze_squeeze, "Squeeze": unsqueeze_squeeze}
    onnx_patterns = {"Unsqueeze": match_squeeze_chain, "Squeeze": match_squeeze_chain}
    examples = (Example({"shape": [6, 1, 1]}, inputs=((6,),), note="a gate vector as (C, 1, 1)"),
                Example({"shape": [-1]}, inputs=((3, 2, 2),)),
                Example({"shape": [6, 2, -1]}, inputs=((3, 4, 5),), note="an image regrouped"))

    @model_validator(mode="after")
    def _check(self):
        if len(self.shape) not in (1, 3):
            raise invalid(f"shape {self.shape} must have 1 (F) or 3 (C, H, W) entries", field="shape")
        if self.shape.count(-1) > 1 or 0 in self.shape:
            raise invalid(f"shape {self.shape}: sizes must be positive, with at most one -1", field="shape")
        return self

    def infer_shape(self, in_shapes):
        total = math.prod(in_shapes[0])
        known = math.prod(d for d in self.shape if d != -1)
        if (total % known if -1 in self.shape else total != known):
            raise self.shape_error(f"cannot reshape {fmt_shape(in_shapes[0])} ({total} elements per sample) to "
                                   f"{fmt_shape(tuple(self.shape))}", field="shape")
        return tuple(total // known if d == -1 else d for d in self.shape)

    def run_numpy(self, xs, params, scratch, out):
        x = xs[0].transpose(0, 3, 1, 2) if xs[0].ndim == 4 else xs[0]  # (C, H, W) order
        y = x.reshape(len(x), *(out.shape[3:] + out.shape[1:3] if out.ndim == 4 else out.shape[1:]))
        np.copyto(out, y.transpose(0, 2, 3, 1) if out.ndim == 4 else y)
        return out

    def lower(self, low):
        return low.elementwise("reshape", "v = LOAD(x0[idx]);")  # NCHW: the same flat order

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, "Reshape", [*xs, ex.const(f"{self.name}:shape", [0, *shape], "int64")], out, shape)

    def torch_reference(self, xs, weights):
        return xs[0].reshape(xs[0].shape[0], *self.shape)


class Dropout(Layer):
    """Identity at inference; `p` is kept so specs exported from training code load unchanged."""
    moves_data_only = True
    op: Literal["dropout"]
    p: float = Field(0.5, ge=0, lt=1, allow_inf_nan=False)
    traits = frozenset({ELEMENTWISE})
    onnx_converters = {"Dropout": dropout}
    examples = (Example({"p": 0.2}), Example({}, inputs=((6,),)))

    def lower(self, low):
        return low.elementwise("copy", "v = LOAD(x0[idx]);")

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, "Dropout", [*xs, ex.const(f"{self.name}:ratio", self.p)], out, shape)

    def torch_reference(self, xs, weights):
        return xs[0]

    def run_numpy(self, xs, params, scratch, out):
        np.copyto(out, xs[0])
        return out


def add(imp, node):
    """Add and Sum of tensors the network computes: residual connections. A constant operand has no layer."""
    inputs = [name for name in node.input if name]
    if any(imp.is_const(t) for t in inputs):
        raise Unsupported("adding a constant has no cnngraph layer (a bias is supported after MatMul)")
    if len(inputs) == 1:
        imp.alias(node, imp.data(node))
    else:
        imp.add_layer(node, {"op": "add"}, [imp.data(node, i) for i in range(len(inputs))])


class Add(Layer):
    """Elementwise sum of 2+ inputs of one shape (residual connections)."""
    op: Literal["add"]
    arity = (2, None)
    traits = frozenset({ELEMENTWISE})
    onnx_converters = {"Add": add, "Sum": add}
    examples = (Example({}, inputs=((3, 5, 4), (3, 5, 4))), Example({}, inputs=((6,), (6,), (6,))))

    def lower(self, low):
        """One kernel; past T.MAX_KERNEL_INPUTS inputs, a chain of kernels that each add a group of
        them to the running sum in the output: the sum in the same order, rounded the same."""
        groups = T.kernel_groups(low.inputs)
        launches = []
        for i, group in enumerate(groups):
            reads = group if i == 0 else [low.output, *group]
            part = f"_part{i + 1}" if len(groups) > 1 else ""
            launches += low.elementwise(f"add{len(low.inputs)}{part}", _sum_expr(len(reads)), reads=reads,
                                        epilogue=i == len(groups) - 1)
        return launches

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, "Add" if len(xs) == 2 else "Sum", xs, out, shape)

    def torch_reference(self, xs, weights):
        return sum(xs[1:], xs[0])

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


def _sum_expr(count: int) -> str:
    return "v = " + " + ".join(f"LOAD(x{i}[idx])" for i in range(count)) + ";"


def concat(imp, node):
    axis = attributes(node).get("axis", 1)
    if all(imp.is_const(t) for t in node.input):  # shape arithmetic
        imp.constant(node, np.concatenate([np.atleast_1d(imp.consts[t]) for t in node.input], axis=axis))
        return
    inputs = [imp.data(node, i) for i in range(len(node.input))]
    rank = len(imp.shapes[inputs[0]]) + 1
    if axis % rank != 1:
        raise Unsupported(f"axis {axis}: only concatenation along channels (axis 1) is supported")
    if len(inputs) == 1:  # torch.cat([x], 1), legal ONNX: x itself
        imp.alias(node, inputs[0])
    else:
        imp.add_layer(node, {"op": "concat"}, inputs)


class Concat(Layer):
    """Concatenation of 2+ inputs along channels (axis 1)."""
    moves_data_only = True
    traits = frozenset({KEEPS_LAYOUT})
    op: Literal["concat"]
    arity = (2, None)
    onnx_converters = {"Concat": concat}
    examples = (Example({}, inputs=((3, 5, 4), (2, 5, 4))), Example({}, inputs=((2,), (5,), (1,))))

    def lower(self, low):
        """One kernel; past T.MAX_KERNEL_INPUTS inputs, one per group of them, each writing its channels."""
        groups = T.kernel_groups(list(zip(low.inputs, low.in_shapes)))
        nhwc = low.channels_last[1]  # the inputs' layout too (passes/assign_layout.py)
        launches, first = [], 0
        for i, group in enumerate(groups):
            channels = [shape[1] for _, shape in group]
            part = f"_part{i + 1}" if len(groups) > 1 else ""
            launches.append(low.launch(f"concat{len(low.inputs)}{part}_{low.sample_dims()}{low.layout_suffix}",
                                       [*(x for x, _ in group), low.output], T.concat, n=low.shape[0],
                                       channels=channels, spatial=int(math.prod(low.shape[2:])), first=first,
                                       out_channels=low.shape[1], channels_last=nhwc))
            first += sum(channels)
        return launches

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, "Concat", xs, out, shape, axis=1)

    def torch_reference(self, xs, weights):
        import torch
        return torch.cat(xs, dim=1)

    def infer_shape(self, in_shapes):
        rest = {(len(s), s[1:]) for s in in_shapes}
        if len(rest) != 1:
            got = " and ".join(fmt_shape(s) for s in in_shapes)
            raise self.shape_error(f"concat needs inputs that differ only in channels, got {got}", field="inputs")
        return (sum(s[0] for s in in_shapes), *in_shapes[0][1:])

    def run_numpy(self, xs, params, scratch, out):
        return np.concatenate(xs, axis=-1, out=out)  # channels are the last axis in the backend (or F for 2-D)


def softmax(imp, node):
    x = imp.data(node)
    rank = len(imp.shapes[x]) + 1
    axis = attributes(node).get("axis", 1 if imp.opset < 13 else -1)
    if not -rank <= axis < rank:  # ONNX Runtime refuses it too; wrapping it would pick an axis the file never named
        raise Unsupported(f"axis {axis} is out of range for a tensor of rank {rank}; valid: {-rank}..{rank - 1}")
    axis %= rank
    if imp.opset < 13 and axis != rank - 1:  # before opset 13 Softmax normalised over every axis from `axis` on
        raise Unsupported(f"before opset 13 Softmax(axis={axis}) normalises over all axes from {axis} on; "
                          f"only the last axis ({rank - 1}) is supported")
    imp.add_layer(node, {"op": "softmax", "axis": axis}, [x])


class Softmax(Layer):
    """`torch.softmax(x, axis)`: exponentials normalised to sum to 1 along one axis."""
    op: Literal["softmax"]
    axis: Int64 = Field(1, description="Axis of the (N, C, H, W) or (N, F) tensor; 1 is the channels.")
    onnx_converters = {"Softmax": softmax}
    examples = (Example({}, inputs=((10,),)), Example({"axis": -1}), Example({"axis": 2}, inputs=((3, 6, 4),)))

    def lower(self, low):
        out = low.shape
        axis = self.axis % len(out)
        return low.simple(f"softmax_axis{axis}_{low.sample_dims()}", T.reduce_rows, kind="softmax",
                          outer=int(math.prod(out[:axis])), length=out[axis], inner=int(math.prod(out[axis + 1:])))

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, "Softmax", xs, out, shape, axis=self.axis)

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        return F.softmax(xs[0], dim=self.axis)

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


# Resize's (coordinate_transformation_mode, nearest_mode) pairs that pick input pixel floor(i / s)
# for an integer scale s, as upsample2d does: half_pixel places the sample at (i + 0.5) / s - 0.5,
# strictly within 0.5 of floor(i / s), so either rounding gives it.
NEAREST_FLOOR = {("asymmetric", "floor"), ("tf_half_pixel_for_nn", "floor"),
                 *((c, r) for c in ("half_pixel", "pytorch_half_pixel") for r in ("round_prefer_floor", "round_prefer_ceil"))}
# Resize's coordinate modes for "linear" that PyTorch's bilinear computes, and its align_corners for each
# (half_pixel differs from pytorch_half_pixel only for an output of size 1)
LINEAR_MODES = {"align_corners": True, "pytorch_half_pixel": False, "half_pixel": False}


def resize(imp, node):
    """Resize / Upsample: nearest by whole factors (or to a size, as PyTorch's floor(i * in / out)
    picks), or bilinear as PyTorch's align_corners true or false: upsample2d."""
    a = attributes(node)
    mode = a.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise Unsupported(f'mode "{mode}": only "nearest" and "linear" (bilinear) are supported')
    coordinates = a.get("coordinate_transformation_mode", "half_pixel" if imp.opset >= 11 else "asymmetric")
    if node.op_type == "Resize" and imp.opset >= 11:
        if "axes" in a or a.get("antialias", 0):
            raise Unsupported("the axes and antialias attributes are not supported")
    x = imp.data(node)
    if len(imp.shapes[x]) != 3:
        raise Unsupported(f"{node.op_type} needs an image input (N,C,H,W), got {fmt_shape(imp.shapes[x])}")
    if node.op_type == "Upsample" and imp.opset < 9:
        scales, sizes = np.asarray(a.get("scales", [])), None
    elif node.op_type == "Upsample" or imp.opset < 11:
        scales, sizes = imp.numbers(node, 1, "scales"), None
    else:
        scales, sizes = imp.numbers(node, 2, "scales", optional=True), imp.value(node, 3, "sizes", optional=True)
        if sizes is not None and any(v is BATCH for v in sizes.reshape(-1)[1:]):
            raise Unsupported("its sizes for C, H and W depend on the batch size N")
    c, h, w = imp.shapes[x]
    if scales is not None and scales.size:
        factors = [float(s) for s in scales.reshape(-1)]
        if not all(math.isfinite(f) for f in factors):
            raise Unsupported(f"scales {factors} are not all finite (corrupt file?)")
        size = [math.floor(n * f) for n, f in zip((h, w), factors[2:])]
        exact = len(factors) == 4 and all(n * f == s for n, f, s in zip((h, w), factors[2:], size))
    elif sizes is not None and sizes.size == 4:
        size = [int(v) for v in sizes.reshape(-1)[2:]]
        factors, exact = [1.0, float(sizes.reshape(-1)[1]) / c, *(s / n for s, n in zip(size, (h, w)))], True
    else:
        raise Unsupported("needs constant scales or sizes for N, C, H and W")
    if len(factors) != 4 or factors[:2] != [1, 1] or not exact or min(size) < 1:
        raise Unsupported(f"scales {[round(f, 4) for f in factors]}: only resizing H and W to whole sizes (scale 1 in N and C) is supported")
    whole = all(f >= 1 and f == int(f) for f in factors[2:])
    layer = {"op": "upsample2d"}
    layer.update({"scale_factor": compact(factors[2:])} if whole else {"size": size})
    if mode == "linear":
        if coordinates not in LINEAR_MODES or (coordinates == "half_pixel" and 1 in size):
            raise Unsupported(f"linear resize with coordinate_transformation_mode {coordinates!r} is not supported; "
                              "use align_corners or pytorch_half_pixel (PyTorch's bilinear)")
        layer.update(mode="bilinear", align_corners=LINEAR_MODES[coordinates])
    elif node.op_type == "Resize" and imp.opset >= 11:
        modes = (coordinates, a.get("nearest_mode", "round_prefer_floor"))
        if modes != ("asymmetric", "floor") and not (whole and modes in NEAREST_FLOOR):
            raise Unsupported(f"coordinate_transformation_mode {modes[0]!r} with nearest_mode {modes[1]!r} is not "
                              "supported; use asymmetric with floor, or half_pixel for whole factors")
    imp.add_layer(node, layer, [x])


def source_table(size: int, out: int, mode: str, align_corners: bool) -> np.ndarray:
    """Per output index along one axis: (first source index, second, weight of the second), as
    PyTorch computes them in float32 (upsample_nearest2d: floor(i * in / out); upsample_bilinear2d:
    its area_pixel_compute_source_index)."""
    i = np.arange(out, dtype=np.float32)
    if mode == "nearest":
        first = np.minimum(np.floor(i * np.float32(size / out)), size - 1)
        return np.stack([first, first, np.zeros_like(first)], axis=1)
    if align_corners:
        source = i * np.float32((size - 1) / (out - 1) if out > 1 else 0.0)
    else:
        source = np.maximum((i + np.float32(0.5)) * np.float32(size / out) - np.float32(0.5), 0)
    first = np.floor(source)
    second = np.minimum(first + 1, size - 1)
    return np.stack([first, second, source - first], axis=1).astype(np.float32)


class Upsample2d(Layer):
    """`F.interpolate` of an image by whole factors (`scale_factor`) or to a `size`: "nearest" (the
    pixel floor(i * in / out)) or "bilinear" (PyTorch's, with `align_corners`)."""
    op: Literal["upsample2d"]
    scale_factor: PositiveInt | Pair | None = None
    size: Pair | None = Field(None, description="The output [H, W], instead of a scale_factor.")
    mode: Literal["nearest", "bilinear"] = "nearest"
    align_corners: bool = Field(False, description="bilinear only: sample the corner pixels' centres exactly.")
    traits = frozenset({KEEPS_LAYOUT})
    onnx_converters = {"Resize": resize, "Upsample": resize}
    examples = (Example({"scale_factor": 2}), Example({"scale_factor": [3, 1]}, inputs=((2, 3, 4),)),
                Example({"size": [7, 5]}, inputs=((2, 3, 4),), note="nearest to a size"),
                Example({"scale_factor": 2, "mode": "bilinear"}),
                Example({"size": [9, 4], "mode": "bilinear", "align_corners": True}, inputs=((2, 4, 6),),
                        note="up in H, down in W"),
                Example({"size": [5, 13], "mode": "bilinear"}, inputs=((3, 4, 5),)))

    @model_validator(mode="after")
    def _check(self):
        if (self.scale_factor is None) == (self.size is None):
            raise invalid("give exactly one of scale_factor and size", field="scale_factor")
        if self.align_corners and self.mode != "bilinear":
            raise invalid('align_corners applies to mode "bilinear" only', field="align_corners")
        return self

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if self.size is not None:
            return pair(self.size)
        sh, sw = pair(self.scale_factor)
        return h * sh, w * sw

    def whole_factors(self, h: int, w: int) -> tuple[int, int] | None:
        """Nearest by whole factors (sh, sw): the integer fast path; None otherwise."""
        p, q = self.output_size(h, w)
        if self.mode == "nearest" and p % h == 0 and q % w == 0:
            return p // h, q // w
        return None

    def lower(self, low):
        n, c, h, w = low.in_shapes[0]
        p, q = low.shape[2:]
        nhwc = low.channels_last[0]  # the output's layout too (passes/assign_layout.py)
        if factors := self.whole_factors(h, w):
            return low.simple(f"upsample{factors[0]}x{factors[1]}_{low.sample_dims()}{low.layout_suffix}",
                              T.upsample_nearest, n=n, c=c, h=h, w=w, sh=factors[0], sw=factors[1],
                              channels_last=nhwc)
        tables = [low.const(axis, source_table(size, out, self.mode, self.align_corners))
                  for axis, size, out in (("rows", h, p), ("cols", w, q))]
        corners = "_corners" if self.align_corners else ""
        return low.simple(f"resize_{self.mode}{corners}_{low.sample_dims()}{low.layout_suffix}", T.resample, tables,
                          n=n, c=c, h=h, w=w, p=p, q=q, mode=self.mode, channels_last=nhwc)

    def to_onnx(self, ex, xs, out, shape):
        c, p, q = shape
        if self.scale_factor is not None:
            resize_to = ["", ex.const(f"{self.name}:scales", [1, 1, *pair(self.scale_factor)])]
        else:
            resize_to = ["", "", ex.const(f"{self.name}:sizes", [0, c, p, q], "int64")]
        if self.size is not None:  # the batch size is only known at compile time: give it as Shape(x)[0]
            batch = ex.node(self.name, "Shape", xs, f"{self.name}:batch", (), name=f"{self.name}:batch", start=0, end=1)
            ex.shapes.pop(batch)
            rest = ex.const(f"{self.name}:chw", [c, p, q], "int64")
            sizes = ex.node(self.name, "Concat", [batch, rest], f"{self.name}:sizes_n", (), name=f"{self.name}:sizes_n",
                            axis=0)
            ex.shapes.pop(sizes)
            resize_to = ["", "", sizes]
        if self.mode == "nearest":  # asymmetric + floor picks input pixel floor(i * in / out)
            attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        else:
            attrs = dict(mode="linear", coordinate_transformation_mode="align_corners" if self.align_corners
                         else "pytorch_half_pixel")
        ex.node(self.name, "Resize", [*xs, *resize_to], out, shape, **attrs)

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        size = self.output_size(*xs[0].shape[2:])
        corners = self.align_corners if self.mode == "bilinear" else None
        return F.interpolate(xs[0], size=size, mode=self.mode, align_corners=corners)

    def infer_shape(self, in_shapes):
        self.expect_image(in_shapes[0])
        c, h, w = in_shapes[0]
        return (c, *self.output_size(h, w))

    def flops(self, in_shapes, out_shape):
        return 0 if self.mode == "nearest" else 8 * int(np.prod(out_shape))

    def prepare(self, weights, in_shapes):
        c, h, w = in_shapes[0]
        p, q = self.output_size(h, w)
        return {"rows": source_table(h, p, self.mode, self.align_corners),
                "cols": source_table(w, q, self.mode, self.align_corners)}

    def run_numpy(self, xs, params, scratch, out):
        x = xs[0]
        n, h, w, c = x.shape
        if factors := self.whole_factors(h, w):
            sh, sw = factors
            out.reshape(n, h, sh, w, sw, c)[...] = x[:, :, None, :, None, :]
            return out
        rows, cols = params["rows"], params["cols"]
        y0, y1, x0, x1 = (table[:, i].astype(np.intp) for table in (rows, cols) for i in (0, 1))
        p, q = out.shape[1:3]
        if self.mode == "nearest":
            np.take(np.take(x, y0, axis=1, out=scratch.get("resize_rows", (n, p, w, c))), x0, axis=2, out=out)
            return out
        # in the scratch numpy_scratch_bytes counts: along W first, then H, as the kernel blends:
        # (1 - ly) * ((1 - lx) * x[y0, x0] + lx * x[y0, x1]) + ly * ((1 - lx) * x[y1, x0] + lx * x[y1, x1])
        ly, lx = rows[:, 2][None, :, None, None], cols[:, 2][None, None, :, None]
        across, term = scratch.get("resize_across", (n, h, q, c)), scratch.get("resize_term", (n, h, q, c))
        np.multiply(np.take(x, x0, axis=2, out=across), 1 - lx, out=across)
        across += np.multiply(np.take(x, x1, axis=2, out=term), lx, out=term)
        down = scratch.get("resize_down", (n, p, q, c))
        np.multiply(np.take(across, y0, axis=1, out=out), 1 - ly, out=out)
        out += np.multiply(np.take(across, y1, axis=1, out=down), ly, out=down)
        return out

    def numpy_scratch_bytes(self, in_shapes, out_shape):
        """run_numpy's buffers: nearest to a size, its rows; bilinear, the blend along W, a term of it,
        and a term of the blend along H."""
        (c, h, w), (n, _, p, q) = in_shapes[0], out_shape
        if self.whole_factors(h, w):
            return 0
        return 4 * (n * p * w * c if self.mode == "nearest" else 2 * n * h * q * c + n * p * q * c)
