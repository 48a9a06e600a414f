"""What the ops' ONNX converters and exporters share: reading a node's attributes, the error that
says why a node cannot be expressed, and the small conversions between ONNX's and the spec's
conventions (pads, pairs, float32 attributes). The ONNX walk itself is interop/onnx_import.py;
`onnx` is imported only when a function needs it.

A converter is `convert(imp, node)`: it reads inputs with `imp.data(node, i)` (a tensor the network
computes) or `imp.value(node, i, what)` (a constant), and makes a layer with
`imp.add_layer(node, {"op": ..., **fields}, [tensors], weights)`, an alias or a constant; it raises
`Unsupported` with the reason when the node cannot be expressed.
"""

from __future__ import annotations

import math

import numpy as np

from ..geometry import cdiv, conv_out_size


class _Batch:
    """The batch size in shape arithmetic: what Shape(x)[0] evaluates to (unknown until compile)."""

    def __repr__(self) -> str:
        return "N"


BATCH = _Batch()


class Unsupported(Exception):
    """Why one node cannot be expressed; collected, so the error names every such node."""



def attributes(node) -> dict:
    """A node's attributes as Python values: strings decoded, tensors as arrays."""
    from onnx import helper, numpy_helper

    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif type(value).__name__ == "TensorProto":
            value = numpy_helper.to_array(value)
        out[attr.name] = value
    return out



def nice(value) -> float:
    """A float32 attribute as the short decimal a person wrote (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def compact(values) -> int | list[int]:
    """[3, 3] -> 3, as a spec would write it; [3, 5] stays a list."""
    values = [int(v) for v in values]
    return values[0] if len(set(values)) == 1 else values


def scalar(array: np.ndarray | None, default: float | None = None) -> float | None:
    if array is None or array.size == 0:
        return default
    if array.size != 1 or array.dtype == object:
        raise Unsupported(f"expected one number, got a tensor of shape {list(array.shape)}")
    return float(array.reshape(()))


def is_close(array: np.ndarray | None, target: float) -> bool:
    return array is not None and array.size == 1 and array.dtype != object and \
        math.isclose(float(array.reshape(())), target, rel_tol=1e-6)


def float_weight(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind != "f":
        raise Unsupported(f"its {what} has dtype {array.dtype}; cnngraph weights are floating point")
    return as_float32(array, what)


def as_float32(array: np.ndarray, what: str) -> np.ndarray:
    """`array` as float32, the precision cnngraph computes in. A float64 value beyond float32's range
    would silently become infinite, so it cannot be expressed."""
    array = np.asarray(array)
    if array.dtype == np.float64 and np.abs(array[np.isfinite(array)]).max(initial=0) > np.finfo(np.float32).max:
        raise Unsupported(f"its {what} holds float64 values beyond float32's range (|x| > 3.4e38), "
                          f"which cnngraph computes in")
    return array.astype(np.float32)



def other_input(node, tensor: str) -> str | None:
    """The input of a two-input node that is not `tensor`."""
    ins = list(node.input)
    if len(ins) != 2 or ins.count(tensor) != 1:
        return None
    return ins[1 - ins.index(tensor)]



def spatial_pads(a: dict, size: tuple, kernel, stride, dilation) -> list[tuple[int, int]]:
    """(begin, end) padding of H and W from `pads` or `auto_pad` (SAME_* pad so that out = ceil(in / stride))."""
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise Unsupported(f"pads {pads} must have 4 values (2-D only)")
        return list(zip(pads[:2], pads[2:]))
    if auto == "VALID":
        return [(0, 0), (0, 0)]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f'auto_pad "{auto}" is not an ONNX value')
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        total = max((cdiv(n, s) - 1) * s + d * (k - 1) + 1 - n, 0)
        small, large = total // 2, total - total // 2
        pads.append((small, large) if auto == "SAME_UPPER" else (large, small))
    return pads


def symmetric_pad(begin: int, end: int, size: int, k: int, s: int, d: int, ceil: bool = False) -> int | None:
    """The equal padding on both sides that computes the same, or None. Extra padding at the end that
    no window reaches changes nothing (TensorFlow-style SAME at stride 2, say)."""
    if begin == end:
        return begin
    if not ceil and end > begin and conv_out_size(size, k, s, begin + end, d) == conv_out_size(size, k, s, 2 * begin, d):
        return begin
    return None


def writing(node, output: str, name: str | None = None):
    """A copy of `node` whose only output is `output` (and named `name`): for a layer that computes
    one output of a multi-output node (Split), the last tensor of a pattern the node starts, or a
    tensor before it (the pad of an asymmetrically padded conv)."""
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(node)
    del copy.output[:]
    copy.output.append(output)
    if name is not None:
        copy.name = name
    return copy


def plain(op: str, imp, node) -> None:
    """The converter of a node with one data input and no attributes that matter (Relu, Sigmoid,
    ...), as the `op` layer; an op binds `op` with functools.partial."""
    imp.add_layer(node, {"op": op}, [imp.data(node)])
