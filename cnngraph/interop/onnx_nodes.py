"""The ONNX nodes that become no layer: Identity (an alias), Constant, and the shape arithmetic
PyTorch's exporter writes for `x.view(x.size(0), -1)`, `x.reshape(x.shape[0], x.shape[1] // 2, -1)`,
`F.interpolate(x, size=...)`, `x.chunk(2, 1)` (Shape, Gather, Div, Concat, Slice, ConstantOfShape,
...). Also the messages for ops that appear only inside multi-node patterns.

`FOLDERS` evaluates a node whose inputs are all constants with NumPy, at import (the walk in
onnx_import.py folds such a node before it would try a layer converter: a Mul of two constants is
a constant, never a layer). The batch size is the symbol BATCH (shown as N): `Shape(x)` is
[N, C, H, W], an object array. N passes through what leaves it unchanged (Gather, Unsqueeze,
Concat, Slice, Reshape, Cast, Mul by 1, Add of 0, comparisons that hold for any N >= 1, ...);
arithmetic that needs its value is refused with `batch_dependent`, as the network is compiled for
one batch size later. A folded tensor may hold MAX_FOLDED_ELEMENTS elements, or as many as the
largest of its inputs (a weight transposed or cast), checked before it is made where an op could
make more (ConstantOfShape, Expand, Range, Tile, broadcasting, Concat, Gather); the importer also
caps the elements folded in all (`fold_budget`), so a hostile file cannot make the import allocate
gigabytes, from one node or from many.

A folder is `fold(c, xs) -> array | list of arrays` (one per output): `c` a `Fold` (the node, its
attributes, the opset), `xs` the node's inputs, each an ndarray or None (an omitted optional
input), or a `DataShape` for Shape and Size of a tensor the network computes. It raises
`Unsupported` with the reason.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from ..errors import InternalError
from ..ops.onnx_mapping import BATCH, Unsupported, attributes

MAX_FOLDED_ELEMENTS = 2**24  # elements of one tensor evaluated at import (shape arithmetic needs a handful)
MIN_FOLD_BUDGET = 2**26      # elements folded in all, at least (or 4x those of the file's constants)
INT64_MAX = 2**63 - 1
DYNAMIC_HINT = "only the batch dimension may be dynamic"


# --- the nodes that are converters (called when a node cannot be folded) -------------------------------

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
    """The converter of an op that is a layer only inside a pattern: it always says why. The walk
    reports such a node even when it reads the output of a node already reported."""
    def convert(imp, node):
        raise Unsupported(why)
    convert.pattern_only = why
    return convert


def constant(imp, node):
    imp.constant(node, constant_value(node))


def constants_only(node) -> str:
    """Why an op that is only folded (shape arithmetic) fails on a tensor the network computes."""
    return (f"unsupported op on a tensor the network computes (cnngraph evaluates {node.op_type} only on constants "
            "and shapes, as shape arithmetic at import)")


def shape_arithmetic_only(imp, node):
    """Gather, Unsqueeze, ... of a tensor the network computes (their constant form is folded)."""
    for t in node.input:
        if t and not imp.is_const(t):
            imp.tensor(t)  # an undefined tensor is a corrupt file; a blocked one is skipped
    raise Unsupported(constants_only(node))


def cast(imp, node):
    if imp.is_const(node.input[0]):  # folded before this is reached; kept for a direct call
        imp.constant(node, fold_cast(Fold(node, imp.opset), [imp.consts[node.input[0]]]))
        return
    if attributes(node).get("to") != 1:
        raise Unsupported("casting a tensor the network computes to anything but float32 is not supported")
    imp.alias(node, imp.data(node))


def transpose(imp, node):
    """Transpose of an image to channels last, (N, H, W, C), or back: no layer. The view is kept
    symbolically (`imp.is_channels_last`): the ops after it that compute per pixel over the channels
    (LayerNorm, a Linear, elementwise ops: ConvNeXt's block) become layers of the image itself."""
    x = imp.data(node)
    perm = [int(p) for p in attributes(node).get("perm", [])]
    view = imp.is_channels_last(x)
    if len(imp.shapes[x]) == 3 and perm == ([0, 3, 1, 2] if view else [0, 2, 3, 1]):
        imp.alias(node, x, channels_last=not view)
        return
    raise Unsupported(f"Transpose(perm={perm}) of a tensor the network computes: only an image's to channels last "
                      "(0, 2, 3, 1) and back (0, 3, 1, 2) are supported")


NON_LAYER_CONVERTERS = {
    "Identity": identity, "Constant": constant, "Transpose": transpose, "Shape": shape_arithmetic_only, "Gather": shape_arithmetic_only,
    "Unsqueeze": shape_arithmetic_only, "Squeeze": shape_arithmetic_only, "Cast": cast,
    # ops that are layers only inside a pattern (an op that converts them on their own replaces these)
    "Mul": pattern_only("Mul is supported only in x * sigmoid(x) (silu) and the erf formula of GELU"),
    "Div": pattern_only("Div is supported only in the erf formula of GELU"),
    "Erf": pattern_only("Erf is supported only in the formula of GELU: 0.5 * x * (1 + erf(x / sqrt(2)))"),
}


# --- folding: what it reads ------------------------------------------------------------------------------

class Fold:
    """What a folder knows of its node."""

    def __init__(self, node, opset: int, limit: int = MAX_FOLDED_ELEMENTS):
        self.node, self.opset, self.op, self.limit = node, opset, node.op_type, limit  # limit: elements it may make
        self.a = attributes(node)


class DataShape(NamedTuple):
    """A tensor the network computes, as Shape and Size see it: its shape, the batch first."""
    shape: tuple


def batch_dependent(what: str) -> Unsupported:
    return Unsupported(f"{what} depends on the batch size N, which is known only when the network is compiled; "
                       f"{DYNAMIC_HINT}, and shape arithmetic may only pass it through unchanged "
                       f"(or export with a fixed batch size)")


def has_batch(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == object and any(v is BATCH for v in value.flat)


def split_batch(value: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric array with each N replaced by 1, and where the Ns were (None without any)."""
    if value.dtype != object:
        return value, None
    mask = np.array([v is BATCH for v in value.flat], dtype=bool).reshape(value.shape)
    rest = [v for v, m in zip(value.flat, mask.flat) if not m]
    dtype = np.asarray(rest).dtype if rest else np.dtype(np.int64)
    if dtype.kind not in "biuf":
        raise Unsupported(f"holds values of type {dtype} (corrupt file?)")
    numeric = np.array([1 if m else v for v, m in zip(value.flat, mask.flat)], dtype=dtype).reshape(value.shape)
    return numeric, (mask if mask.any() else None)


def join_batch(numeric: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The inverse of split_batch: N put back where `mask` says (an object array), else `numeric`."""
    if mask is None or not mask.any():
        return numeric
    out = np.empty(numeric.shape, dtype=object)
    for index in np.ndindex(numeric.shape):
        out[index] = BATCH if mask[index] else numeric[index]  # numpy scalars keep their dtype
    return out


def show(value) -> str:
    """A folded value in a message: N for the batch, short."""
    if value is BATCH:
        return "N"
    array = np.asarray(value)
    if array.ndim == 0:
        return str(array.item()) if array.dtype != object else show(array.item())
    items = [show(v) for v in array.flat[:8]]
    return "[" + ", ".join(items) + (", ..." if array.size > 8 else "") + "]"


def numeric(c: Fold | None, value, what: str) -> np.ndarray | None:
    """An input that says how (a shape, indices, axes, bounds): numeric, without N."""
    if value is None:
        return None
    if has_batch(value):
        raise batch_dependent(f"its {what} {show(value)}")
    array = split_batch(np.asarray(value))[0]
    if array.dtype.kind not in "biuf":
        raise Unsupported(f"its {what} has type {array.dtype}, not a number")
    return array


def ints(c: Fold, value, what: str) -> list[int]:
    array = numeric(c, value, what)
    if array is None:
        return []
    if array.dtype.kind not in "biu":
        raise Unsupported(f"its {what} {show(array)} must be integers")
    return [int(v) for v in array.reshape(-1)]


def capped(c: Fold, shape) -> tuple:
    """`shape`, checked to make at most `c.limit` elements."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise Unsupported(f"would make a tensor of shape {list(shape)}, with a negative dimension")
    count = math.prod(shape)
    if count > c.limit:
        raise Unsupported(f"would make a constant of {count:,} elements at import, more than the "
                          f"{c.limit:,} cnngraph evaluates (corrupt or hostile file?)")
    return shape


def broadcast(c: Fold, shapes: list[tuple]) -> tuple:
    try:
        out = np.broadcast_shapes(*shapes)
    except ValueError:
        raise Unsupported(f"its inputs of shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast") from None
    return capped(c, out)


def axis_of(c: Fold, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise Unsupported(f"{what} {axis} is out of range for a tensor of rank {rank}")
    return axis % max(rank, 1)


def attribute_or_input(c: Fold, xs: list, index: int, name: str, since: int):
    """A value that is an attribute before opset `since` and an input from it on (axes, split, ...)."""
    if c.opset < since:
        return None if name not in c.a else np.asarray(c.a[name])
    return xs[index] if index < len(xs) else None


# --- folding: elementwise arithmetic, with the batch symbol ------------------------------------------------

def batch_rule(c: Fold, operands: list):
    """The value of one element of an elementwise op whose operands include N (the batch size, >= 1),
    when it is known without N's value: N itself (N * 1), a constant (N > 0), or a batch_dependent error."""
    op, others = c.op, [v for v in operands if v is not BATCH]
    n = len(operands) - len(others)
    values = [float(v) for v in others]
    if op in ("Identity", "Abs", "Ceil", "Floor", "Round"):
        return BATCH
    if op == "Sign":
        return 1
    if op in ("Max", "Min") and all(v <= 1 for v in values):  # N >= 1
        return BATCH if op == "Max" or not values else min(values)
    if len(operands) == 2:
        a, b = operands
        k = values[0] if values else None
        if op == "Add" and n == 1 and k == 0:
            return BATCH
        if op == "Sub" and a is BATCH and (b is BATCH or k == 0):
            return 0 if b is BATCH else BATCH
        if op == "Mul" and n == 1 and k == 1:
            return BATCH
        if op == "Div" and a is BATCH and (b is BATCH or k == 1):
            return 1 if b is BATCH else BATCH
        both = {"Equal": True, "Less": False, "Greater": False, "LessOrEqual": True, "GreaterOrEqual": True}
        if n == 2 and op in both:
            return both[op]
        if n == 1 and op in both:  # N compared with k: known when k < 1 (or k <= 1 for the strict side)
            if b is BATCH:  # k op N is N op' k
                op = {"Less": "Greater", "Greater": "Less", "LessOrEqual": "GreaterOrEqual",
                      "GreaterOrEqual": "LessOrEqual"}.get(op, op)
            known = {"Equal": (k < 1, False), "Less": (k <= 1, False), "Greater": (k < 1, True),
                     "LessOrEqual": (k < 1, False), "GreaterOrEqual": (k <= 1, True)}[op]
            if known[0]:
                return known[1]
    raise batch_dependent(f"{c.op}({', '.join(show(v) for v in operands)})")


def elementwise(c: Fold, xs: list, compute: Callable) -> np.ndarray:
    """compute(*numeric inputs), NumPy-broadcast; the elements that involve N by `batch_rule`."""
    xs = [np.asarray(x) for x in xs]
    shape = broadcast(c, [x.shape for x in xs])
    parts = [split_batch(x) for x in xs]
    with np.errstate(all="ignore"):
        result = np.asarray(compute(*[p[0] for p in parts]))
    masks = [p[1] for p in parts]
    if all(m is None for m in masks):
        return result
    result = np.array(np.broadcast_to(result, shape))
    involved = np.zeros(shape, dtype=bool)
    for m in masks:
        if m is not None:
            involved |= np.broadcast_to(m, shape)
    operands = [np.broadcast_to(x, shape) for x in xs]
    out_mask = np.zeros(shape, dtype=bool)
    for index in np.ndindex(shape):
        if not involved[index]:
            continue
        value = batch_rule(c, [x[index] for x in operands])
        if value is BATCH:
            out_mask[index] = True
        else:
            result[index] = value
    return join_batch(result, out_mask)


def unary(compute: Callable, floats_only: bool = False):
    def fold(c, xs):
        if floats_only and split_batch(np.asarray(xs[0]))[0].dtype.kind != "f":
            raise Unsupported(f"{c.op} takes a floating-point tensor, got {np.asarray(xs[0]).dtype}")
        return elementwise(c, xs[:1], lambda x: np.asarray(compute(x)).astype(x.dtype))
    return fold


def same_type(compute: Callable):
    """A binary op whose result has its inputs' type (NumPy's promotion when a hand-made file mixes them)."""
    def fold(c, xs):
        def typed(a, b):
            return np.asarray(compute(a, b)).astype(np.result_type(a, b))
        return elementwise(c, xs[:2], typed)
    return fold


def comparison(compute: Callable):
    def fold(c, xs):
        return elementwise(c, xs[:2], compute)
    return fold


def divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX's Div: integer division truncates toward zero (as C does), floats divide."""
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        if (b == 0).any():
            raise Unsupported("divides an integer by zero")
        q = np.floor_divide(a, b)
        return q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)))
    return np.true_divide(a, b)


def fold_mod(c, xs):
    fmod = c.a.get("fmod", 0)

    def mod(a, b):
        if a.dtype.kind in "biu" and b.dtype.kind in "biu" and (b == 0).any():
            raise Unsupported("takes an integer modulo zero")
        return (np.fmod if fmod else np.mod)(a, b)
    return same_type(mod)(c, xs)


def fold_pow(c, xs):
    def power(a, b):
        if a.dtype.kind in "biu":  # ONNX's result has the base's type
            return np.power(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)
        return np.power(a, b.astype(a.dtype))
    return elementwise(c, xs[:2], power)


def variadic(compute: Callable):
    """Sum, Max, Min, Mean of 1+ inputs."""
    def fold(c, xs):
        present = [x for x in xs if x is not None]
        if not present:
            raise Unsupported(f"{c.op} needs at least one input")
        return elementwise(c, present, lambda *vs: np.asarray(compute(vs)).astype(np.result_type(*vs)))
    return fold


def fold_clip(c, xs):
    if c.opset < 11:
        low, high = c.a.get("min"), c.a.get("max")
    else:
        low = numeric(c, xs[1] if len(xs) > 1 else None, "min")
        high = numeric(c, xs[2] if len(xs) > 2 else None, "max")
        for bound, what in ((low, "min"), (high, "max")):
            if bound is not None and bound.size != 1:
                raise Unsupported(f"its {what} must be one number, got shape {list(bound.shape)}")
        low, high = (None if v is None else v.reshape(()).item() for v in (low, high))
    x = np.asarray(xs[0])
    if low is None and high is None:
        return x
    if has_batch(x) and (low is None or low <= 1) and (high is None or high >= INT64_MAX):
        return x  # N clipped below by at most 1: N
    if has_batch(x):
        raise batch_dependent(f"Clip({show(x)}, {low}, {high})")
    with np.errstate(all="ignore"):
        return np.clip(x, low, high).astype(x.dtype)


def fold_where(c, xs):
    condition = numeric(c, xs[0], "condition")
    x, y = np.asarray(xs[1]), np.asarray(xs[2])
    broadcast(c, [condition.shape, x.shape, y.shape])
    return np.where(condition.astype(bool), x, y)


def logical(compute: Callable):
    def fold(c, xs):
        values = [numeric(c, x, "input").astype(bool) for x in xs if x is not None]
        broadcast(c, [v.shape for v in values])
        return np.asarray(compute(*values))
    return fold


# --- folding: shapes and layout -----------------------------------------------------------------------------

def fold_shape(c, xs):
    x = xs[0]
    dims = np.array(x.shape, dtype=object) if isinstance(x, DataShape) else np.array(np.shape(x), dtype=np.int64)
    if c.opset >= 15:
        dims = dims[c.a.get("start", 0):c.a.get("end", len(dims))]  # Python's slicing is ONNX's clamping
    if dims.dtype == object:
        numeric_dims, mask = split_batch(dims)
        return join_batch(numeric_dims.astype(np.int64), mask)
    return dims


def fold_size(c, xs):
    if isinstance(xs[0], DataShape):
        raise batch_dependent("the element count of a tensor the network computes")
    return np.array(np.asarray(xs[0]).size, dtype=np.int64)


def fold_gather(c, xs):
    data = np.asarray(xs[0])
    if data.ndim == 0:
        raise Unsupported("gathers from a scalar (rank 0)")
    axis = axis_of(c, int(c.a.get("axis", 0)), data.ndim)
    indices = numeric(c, xs[1], "indices")
    if indices.dtype.kind not in "iu":
        raise Unsupported(f"its indices have type {indices.dtype}, not integers")
    size = data.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise Unsupported(f"index {show(indices)} is out of range for axis {axis} of size {size}")
    capped(c, data.shape[:axis] + indices.shape + data.shape[axis + 1:])
    return np.take(data, indices.astype(np.int64), axis=axis)


def _axes(c, xs, since: int = 13) -> list[int]:
    return ints(c, attribute_or_input(c, xs, 1, "axes", since), "axes")


def fold_unsqueeze(c, xs):
    value = np.asarray(xs[0])
    axes = _axes(c, xs)
    rank = value.ndim + len(axes)
    axes = [axis_of(c, a, rank) for a in axes]
    if len(set(axes)) != len(axes):
        raise Unsupported(f"its axes {axes} repeat an axis")
    for axis in sorted(axes):
        value = np.expand_dims(value, axis)
    return value


def fold_squeeze(c, xs):
    value = np.asarray(xs[0])
    axes = [axis_of(c, a, value.ndim) for a in _axes(c, xs)]
    if any(value.shape[a] != 1 for a in axes):
        raise Unsupported(f"squeezes axes {axes} of a tensor of shape {list(value.shape)}; only size-1 axes can go")
    return np.squeeze(value, axis=tuple(axes)) if axes else np.squeeze(value)


def fold_cast(c, xs):
    from onnx import helper

    to = c.a.get("to")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    except (KeyError, TypeError, ValueError):
        raise Unsupported(f"casts to type {to}, which is no ONNX tensor type") from None
    if dtype.kind not in "biuf":
        raise Unsupported(f"casting to {dtype} is not supported at import (only numbers and booleans)")
    value = np.asarray(xs[0])
    number, mask = split_batch(value)
    if number.dtype.kind not in "biuf":
        raise Unsupported(f"casting from {value.dtype} is not supported at import")
    with np.errstate(all="ignore"):
        number = number.astype(dtype)
    if mask is not None and dtype.kind == "b":
        return number  # N >= 1 is true
    return join_batch(number, mask)


def fold_concat(c, xs):  # Concat(W, W) of a W over the limit is refused: a chain of them would double each time
    values = [np.atleast_1d(np.asarray(x)) for x in xs if x is not None]
    if not values:
        raise Unsupported("Concat needs at least one input")
    rank = values[0].ndim
    if any(v.ndim != rank for v in values):
        raise Unsupported(f"concatenates tensors of ranks {[v.ndim for v in values]}")
    axis = axis_of(c, int(c.a.get("axis", 0)), rank)
    capped(c, (sum(v.size for v in values),))
    return np.concatenate(values, axis=axis)


def fold_reshape(c, xs):
    data = np.asarray(xs[0])
    target = ints(c, xs[1], "shape")
    allowzero = c.opset >= 14 and c.a.get("allowzero", 0)
    if not allowzero:
        if any(i >= data.ndim for i, d in enumerate(target) if d == 0):
            raise Unsupported(f"its shape {target} copies a dimension the input (rank {data.ndim}) lacks")
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) > 1 or any(d < -1 for d in target):
        raise Unsupported(f"its shape {target} is not a valid target shape")
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or data.size % known:
            raise Unsupported(f"cannot reshape {data.size} elements to {target}")
        target[target.index(-1)] = data.size // known
    if math.prod(target) != data.size:
        raise Unsupported(f"cannot reshape {data.size} elements to {target}")
    return data.reshape(target)


def fold_expand(c, xs):
    data = np.asarray(xs[0])
    shape = broadcast(c, [data.shape, tuple(ints(c, xs[1], "shape"))])
    return np.array(np.broadcast_to(data, shape))


def fold_tile(c, xs):
    data = np.asarray(xs[0])
    repeats = ints(c, xs[1], "repeats")
    if len(repeats) != data.ndim or any(r < 0 for r in repeats):
        raise Unsupported(f"its repeats {repeats} must be {data.ndim} non-negative integers")
    capped(c, [d * r for d, r in zip(data.shape, repeats)])
    return np.tile(data, repeats)


def fold_transpose(c, xs):
    data = np.asarray(xs[0])
    perm = [int(p) for p in c.a.get("perm", range(data.ndim - 1, -1, -1))]
    if sorted(perm) != list(range(data.ndim)):
        raise Unsupported(f"perm {perm} is not a permutation of the axes of a rank-{data.ndim} tensor")
    return np.transpose(data, perm)


def fold_constant_of_shape(c, xs):
    shape = capped(c, ints(c, xs[0], "shape"))
    value = np.asarray(c.a.get("value", np.zeros(1, np.float32)))
    if value.size != 1:
        raise Unsupported(f"its value must hold one element, got {value.size}")
    return np.full(shape, value.reshape(-1)[0], dtype=value.dtype)


def fold_range(c, xs):
    start, limit, delta = (numeric(c, x, what) for x, what in zip(xs, ("start", "limit", "delta")))
    if any(v is None or v.size != 1 for v in (start, limit, delta)):
        raise Unsupported("its start, limit and delta must be one number each")
    dtype = np.result_type(start, limit, delta)
    start, limit, delta = (v.reshape(()).item() for v in (start, limit, delta))
    if delta == 0:
        raise Unsupported("its delta is 0")
    if dtype.kind in "iu":
        count = max(-((start - limit) // delta), 0)  # ceil((limit - start) / delta), exactly
    else:
        count = max(math.ceil((limit - start) / delta), 0) if math.isfinite((limit - start) / delta) else -1
    if count < 0:
        raise Unsupported(f"Range({start}, {limit}, {delta}) is not finite")
    capped(c, (count,))
    return (start + np.arange(count) * delta).astype(dtype)


def fold_slice(c, xs):
    data = np.asarray(xs[0])
    if c.opset < 10:
        starts, ends = [int(v) for v in c.a.get("starts", [])], [int(v) for v in c.a.get("ends", [])]
        axes, steps = [int(v) for v in c.a.get("axes", range(len(starts)))], [1] * len(starts)
    else:
        starts, ends = ints(c, xs[1], "starts"), ints(c, xs[2], "ends")
        axes = ints(c, xs[3], "axes") if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = ints(c, xs[4], "steps") if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise Unsupported(f"its starts, ends, axes and steps have different lengths "
                          f"({len(starts)}, {len(ends)}, {len(axes)}, {len(steps)})")
    axes = [axis_of(c, a, data.ndim) for a in axes]
    if len(set(axes)) != len(axes):
        raise Unsupported(f"its axes {axes} repeat an axis")
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = data.shape[axis]
        if step == 0:
            raise Unsupported("a step of 0")
        start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index[axis] = np.arange(start, end, step, dtype=np.int64)  # `end` -1 means "before 0", not the last
    for axis, taken in enumerate(index):
        if isinstance(taken, np.ndarray):
            data = np.take(data, taken, axis=axis)
    return data


def fold_split(c, xs):
    data = np.asarray(xs[0])
    if data.ndim == 0:
        raise Unsupported("splits a scalar (rank 0)")
    axis = axis_of(c, int(c.a.get("axis", 0)), data.ndim)
    sizes = ints(c, attribute_or_input(c, xs, 1, "split", 13), "split")
    parts = len(c.node.output)
    dim = data.shape[axis]
    if not sizes:
        count = int(c.a.get("num_outputs", parts))
        if count <= 0:
            raise Unsupported(f"splits into {count} parts")
        chunk = -(-dim // count)
        sizes = [min(chunk, max(dim - i * chunk, 0)) for i in range(count)]
    if len(sizes) != parts or sum(sizes) != dim or any(s < 0 for s in sizes):
        raise Unsupported(f"splits axis {axis} of size {dim} into {sizes} for {parts} outputs")
    return np.split(data, np.cumsum(sizes)[:-1], axis=axis)


def reduction(compute: Callable):
    def fold(c, xs):
        data = np.asarray(xs[0])
        axes = _axes(c, xs, since=13 if c.op == "ReduceSum" else 18)
        keepdims = bool(c.a.get("keepdims", 1))
        if not axes and c.a.get("noop_with_empty_axes", 0):
            return data
        axes = tuple(sorted({axis_of(c, a, data.ndim) for a in axes})) if axes else tuple(range(data.ndim))
        if has_batch(data):
            if any(data.shape[a] != 1 for a in axes):
                raise batch_dependent(f"{c.op} of {show(data)}")
            return data if keepdims else np.squeeze(data, axis=axes)  # each group holds one element
        if data.size == 0 and c.op in ("ReduceMin", "ReduceMax"):
            raise Unsupported(f"{c.op} of an empty tensor")
        with np.errstate(all="ignore"):
            return np.asarray(compute(data, axis=axes, keepdims=keepdims)).astype(data.dtype)
    return fold


def fold_identity(c, xs):
    return np.asarray(xs[0])


def fold_constant(c, xs):
    return constant_value(c.node)


FOLDERS: dict[str, Callable] = {
    "Constant": fold_constant, "Identity": fold_identity, "Shape": fold_shape, "Size": fold_size,
    "Gather": fold_gather, "Unsqueeze": fold_unsqueeze, "Squeeze": fold_squeeze, "Cast": fold_cast,
    "Concat": fold_concat, "Reshape": fold_reshape, "Expand": fold_expand, "Tile": fold_tile,
    "Transpose": fold_transpose, "ConstantOfShape": fold_constant_of_shape, "Range": fold_range,
    "Slice": fold_slice, "Split": fold_split,
    "Add": same_type(np.add), "Sub": same_type(np.subtract), "Mul": same_type(np.multiply),
    "Div": same_type(divide), "Mod": fold_mod, "Pow": fold_pow,
    "Sum": variadic(lambda vs: sum(vs[1:], vs[0])), "Mean": variadic(lambda vs: sum(vs[1:], vs[0]) / len(vs)),
    "Max": variadic(lambda vs: np.maximum.reduce(np.broadcast_arrays(*vs))),
    "Min": variadic(lambda vs: np.minimum.reduce(np.broadcast_arrays(*vs))),
    "Neg": unary(np.negative), "Abs": unary(np.abs), "Sign": unary(np.sign),
    "Ceil": unary(np.ceil, floats_only=True), "Floor": unary(np.floor, floats_only=True),
    "Round": unary(np.round, floats_only=True), "Sqrt": unary(np.sqrt, floats_only=True),
    "Reciprocal": unary(np.reciprocal, floats_only=True), "Exp": unary(np.exp, floats_only=True),
    "Log": unary(np.log, floats_only=True),
    "Clip": fold_clip, "Where": fold_where,
    "Equal": comparison(np.equal), "Less": comparison(np.less), "Greater": comparison(np.greater),
    "LessOrEqual": comparison(np.less_equal), "GreaterOrEqual": comparison(np.greater_equal),
    "Not": logical(np.logical_not), "And": logical(np.logical_and), "Or": logical(np.logical_or),
    "Xor": logical(np.logical_xor),
    "ReduceProd": reduction(np.prod), "ReduceSum": reduction(np.sum), "ReduceMin": reduction(np.min),
    "ReduceMax": reduction(np.max), "ReduceMean": reduction(np.mean),
}
"""ONNX op type -> its NumPy evaluation at import, when all the node's inputs are constants."""

SHAPE_READERS = ("Shape", "Size")  # folded from a computed tensor's shape, not only from constants


def fold(node, opset: int, xs: list) -> list[np.ndarray]:
    """The values of `node`'s outputs, its inputs `xs` being known; Unsupported with the reason. NumPy's
    own errors on the values (shapes that do not fit, a type an op does not take) are the file's. Each
    output may hold MAX_FOLDED_ELEMENTS elements, or as many as its largest input."""
    sizes = [x.size for x in xs if isinstance(x, np.ndarray)]
    try:
        c = Fold(node, opset, max([MAX_FOLDED_ELEMENTS, *sizes]))
        values = FOLDERS[node.op_type](c, xs)
    except (ValueError, IndexError) as err:  # np.AxisError is both
        raise Unsupported(f"cannot be evaluated at import: {err}") from None
    except TypeError as err:
        if type(err).__name__ != "UFuncTypeError" and "ufunc" not in str(err):  # not NumPy refusing a type
            raise
        raise Unsupported(f"cannot be evaluated at import: {err}") from None
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(values) < len(node.output):
        raise InternalError(f"folding {node.op_type} made {len(values)} values for {len(node.output)} outputs")
    out = []
    for value in values:
        value = np.asarray(value)
        capped(c, value.shape)
        if value.dtype == object:  # numbers again once no N is left (Gather of [N, 3, 9, 9] at 1: 3)
            value = join_batch(*split_batch(value))
        out.append(value)
    return out
