"""The ONNX nodes that become no layer: Identity (an alias), and the shape arithmetic PyTorch emits
for `x.view(x.size(0), -1)` (Shape, Gather, Unsqueeze, ...), evaluated at import time with the batch
size as the symbol BATCH. Also the messages for ops that appear only inside multi-node patterns."""

from __future__ import annotations

import numpy as np

from ..ops.onnx_mapping import BATCH, Unsupported, attributes


def identity(imp, node):
    if imp.is_const(node.input[0]):
        imp.constant(node, imp.consts[node.input[0]])
    else:
        imp.alias(node, imp.data(node))


def constant_value(node) -> np.ndarray:
    try:
        a = attributes(node)
    except (ValueError, TypeError) as err:  # a tensor whose data does not fit its dims
        raise Unsupported(f"its value is corrupt (truncated file?): {err}") from None
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            value = np.asarray(a[key])
            return value.astype(np.float32) if key.startswith("value_float") else value
    raise Unsupported(f"a Constant with {', '.join(a) or 'no value'} is not supported")


def pattern_only(why: str):
    def convert(imp, node):
        raise Unsupported(why)
    return convert


# --- shape arithmetic: evaluated now, with the batch size as the symbol BATCH ------------------------

def constant(imp, node):
    imp.constant(node, constant_value(node))


def shape_of(imp, node):
    if imp.is_const(node.input[0]):
        shape = np.array(imp.consts[node.input[0]].shape, dtype=np.int64)
    else:
        shape = np.array([BATCH, *imp.shapes[imp.data(node)]], dtype=object)
    a = attributes(node)
    imp.constant(node, shape[a.get("start", 0):a.get("end", len(shape))])


def gather(imp, node):
    data = imp.value(node, 0, "data")  # gathering from a tensor the network computes has no layer
    indices = imp.value(node, 1, "indices")
    taken = np.take(data, indices.astype(np.int64), axis=attributes(node).get("axis", 0))
    imp.constant(node, np.asarray(taken, dtype=data.dtype))  # a 0-d array, BATCH kept as an object


def _axes(imp, node) -> list[int]:
    if imp.opset < 13:
        return list(attributes(node).get("axes", []))
    axes = imp.value(node, 1, "axes", optional=True)
    return [] if axes is None else [int(v) for v in axes.reshape(-1)]


def unsqueeze(imp, node):
    value = imp.value(node, 0, "data")
    axes = _axes(imp, node)
    rank = value.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        value = np.expand_dims(value, axis)
    imp.constant(node, value)


def squeeze(imp, node):
    value = imp.value(node, 0, "data")
    axes = _axes(imp, node)
    imp.constant(node, np.squeeze(value, axis=tuple(a % value.ndim for a in axes)) if axes else np.squeeze(value))


def cast(imp, node):
    from onnx import helper

    if not imp.is_const(node.input[0]):
        if attributes(node).get("to") != 1:
            raise Unsupported("casting a tensor the network computes to anything but float32 is not supported")
        imp.alias(node, imp.data(node))
        return
    value = imp.consts[node.input[0]]
    if value.dtype != object:
        value = value.astype(helper.tensor_dtype_to_np_dtype(attributes(node)["to"]))
    imp.constant(node, value)


NON_LAYER_CONVERTERS = {
    "Identity": identity, "Constant": constant, "Shape": shape_of, "Gather": gather, "Unsqueeze": unsqueeze,
    "Squeeze": squeeze, "Cast": cast,
    # ops that are layers only inside a pattern (an op that converts them on their own replaces these)
    "Mul": pattern_only("Mul is supported only in x * sigmoid(x) (silu) and the erf formula of GELU"),
    "Div": pattern_only("Div is supported only in the erf formula of GELU"),
    "Erf": pattern_only("Erf is supported only in the formula of GELU: 0.5 * x * (1 + erf(x / sqrt(2)))"),
}
