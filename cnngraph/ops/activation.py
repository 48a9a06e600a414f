"""Elementwise activations: as layers of their own and as the `activation` field of conv2d/linear.

Each activation is a small parameter model (`Relu`, `LeakyRelu(negative_slope)`, ...) that declares
everything about itself: its NumPy implementation (in place), its C expression for the kernels, its
ONNX import and export, its PyTorch reference and its example parameters. Defining one also defines
the layer of the same op (that model plus `name`/`inputs`): one class is the whole activation.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field, TypeAdapter, model_validator

from .base import ACTIVATION, ELEMENTWISE, Example, Float32, Layer, Strict, invalid
from .onnx_mapping import Unsupported, attributes, is_close, nice, other_input, plain, scalar

ACTIVATIONS: dict[str, type["Activation"]] = {}  # op -> parameter model, in definition order


BLOCK = 1 << 15  # elements per pass of a multi-step activation: its temporaries stay in cache, and small

# erf(z) for z in [0, ERF_RANGE), tabulated with its slope at ERF_STEPS points (NumPy has no erf):
# linear interpolation is within 2e-8 of erf, and erf(6) is 1 in float32
ERF_RANGE, ERF_STEPS = 6.0, 1 << 14


@functools.cache
def _erf_table() -> tuple[np.ndarray, np.ndarray]:
    """(erf at each step, the rise to the next step), float32, made once."""
    values = np.array([math.erf(i * ERF_RANGE / ERF_STEPS) for i in range(ERF_STEPS + 1)])
    return values[:-1].astype(np.float32), np.diff(values).astype(np.float32)


def _in_blocks(x: np.ndarray, step, temporaries: int) -> np.ndarray:
    """Apply `step(v, *buffers)` in place to cache-sized blocks of x (contiguous float32), with
    `temporaries` reusable float32 buffers of a block's size: no temporary as large as x."""
    flat = x.reshape(-1)
    buffers = [np.empty(min(BLOCK, flat.size), np.float32) for _ in range(temporaries)]
    for start in range(0, flat.size, BLOCK):
        v = flat[start:start + BLOCK]
        step(v, *(b[:len(v)] for b in buffers))
    return x


def _contiguous(x: np.ndarray) -> np.ndarray:
    """x itself when contiguous (worked on in place), else a contiguous copy (apply_activation
    writes the result back)."""
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def _silu(v: np.ndarray, t: np.ndarray) -> None:
    """v <- v * sigmoid(v)."""
    np.copyto(t, v)
    v *= _sigmoid(t)


def _hardswish(v: np.ndarray, t: np.ndarray) -> None:
    """v <- v * relu6(v + 3) / 6."""
    np.add(v, 3, out=t)
    np.clip(t, 0, 6, out=t)
    t *= np.float32(1 / 6)
    v *= t


def _gelu_erf(v: np.ndarray, t: np.ndarray, q: np.ndarray) -> None:
    """v <- 0.5 v (1 + erf(v / sqrt 2)), in float32, erf interpolated from its table."""
    values, rises = _erf_table()
    np.abs(v, out=t)
    t *= np.float32(ERF_STEPS / (ERF_RANGE * math.sqrt(2)))   # the table position of |v| / sqrt 2
    np.fmin(t, ERF_STEPS - 1, out=t)                           # beyond the table (and NaN): its last entry
    index = t.astype(np.intp)
    t -= index                                                 # the fraction of a step
    np.take(rises, index, out=q)
    q *= t
    np.take(values, index, out=t)
    q += t                                                     # erf(|v| / sqrt 2)
    np.copysign(q, v, out=q)
    q += 1
    v *= q
    v *= np.float32(0.5)


def _gelu_tanh(v: np.ndarray, t: np.ndarray) -> None:
    """v <- 0.5 v (1 + tanh(sqrt(2 / pi) (v + 0.044715 v^3))), in float32."""
    np.multiply(v, v, out=t)
    t *= np.float32(0.044715)
    t += 1
    t *= v
    t *= np.float32(math.sqrt(2 / math.pi))
    np.tanh(t, out=t)
    t += 1
    v *= t
    v *= np.float32(0.5)


class Activation(Strict):
    """Base of the activation parameter models. `apply` may overwrite `x` and returns the result."""

    onnx_op: ClassVar[str | None] = None            # the ONNX op of the same meaning, when there is one
    onnx_converters: ClassVar[dict] = {}            # as Layer's: ONNX op type -> converter
    onnx_patterns: ClassVar[dict] = {}              # as Layer's: first node's op type -> matcher
    variants: ClassVar[tuple[dict, ...]] = ({},)    # parameter sets the tests try

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if issubclass(cls, Layer):
            return  # the layer form made below
        op = get_args(cls.model_fields["op"].annotation)[0]
        ACTIVATIONS[op] = cls
        _layer_of(cls)

    def apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def c_expr(self, v: str) -> str:
        """The activation of C variable `v`, in the neutral kernel dialect (codegen/dialects.py)."""
        raise NotImplementedError

    def torch(self, x):
        """The activation by PyTorch, the tests' reference."""
        raise NotImplementedError

    def export_onnx(self, ex, xs: list[str], out: str, shape, layer: str, name: str) -> None:
        """The ONNX node(s) of this activation, named `name`, belonging to spec layer `layer`."""
        ex.node(layer, self.onnx_op, xs, out, shape, name=name)

    @property
    def label(self) -> str:
        return self.op


def _torch():
    import torch
    import torch.nn.functional as F
    return torch, F


class ActivationLayer(Layer):
    """An activation written as a layer: shape-preserving (the base rule), any input rank."""
    traits = frozenset({ELEMENTWISE, ACTIVATION})

    def run_numpy(self, xs, params, scratch, out):
        np.copyto(out, xs[0])
        return apply_activation(self, out)

    def lower(self, low):
        return low.elementwise(self.label, f"v = LOAD(x0[idx]);\nv = {self.c_expr('v')};")

    def to_onnx(self, ex, xs, out, shape):
        self.export_onnx(ex, xs, out, shape, layer=self.name, name=self.name)

    def torch_reference(self, xs, weights):
        return self.torch(xs[0])

    def activation_model(self) -> Activation:
        """The same activation as a parameter model, for an `activation` field or an epilogue."""
        return make_activation(self.model_dump(exclude={"name", "inputs"}))


def _layer_of(act: type[Activation]) -> type[BaseModel]:
    examples = tuple(Example(fields=v, inputs=(shape,), note=note) for v in act.variants
                     for shape, note in (((3, 9, 10), "image"), ((7,), "vector")))
    return type(act.__name__ + "Layer", (ActivationLayer, act),
                {"__doc__": f"The {act.__name__} activation as a layer.", "__module__": act.__module__,
                 "examples": examples})


class Relu(Activation):
    op: Literal["relu"]
    onnx_op = "Relu"
    onnx_converters = {"Relu": functools.partial(plain, "relu")}

    def apply(self, x):
        return np.maximum(x, 0, out=x)

    def c_expr(self, v):
        return f"max_nan({v}, 0.0f)"

    def torch(self, x):
        return _torch()[1].relu(x)


def clip(imp, node):
    """Clip(0, 6) is relu6 and Clip(0) is relu; the bounds are attributes before opset 11, inputs after."""
    if imp.opset < 11:
        a = attributes(node)
        low, high = a.get("min", -math.inf), a.get("max", math.inf)
    else:
        low = scalar(imp.value(node, 1, "min", optional=True), -math.inf)
        high = scalar(imp.value(node, 2, "max", optional=True), math.inf)
    ops = {(0.0, 6.0): {"op": "relu6"}, (0.0, math.inf): {"op": "relu"}}
    bounds = {"min": nice(low)} if low > -math.inf else {}
    bounds.update({"max": nice(high)} if high < math.inf else {})
    imp.add_layer(node, ops.get((low, high)) or {"op": "clamp", **bounds}, [imp.data(node)])


class Relu6(Activation):
    op: Literal["relu6"]

    def apply(self, x):
        return np.clip(x, 0, 6, out=x)

    def c_expr(self, v):
        return f"min_nan(max_nan({v}, 0.0f), 6.0f)"

    def torch(self, x):
        return _torch()[1].relu6(x)

    def export_onnx(self, ex, xs, out, shape, layer, name):
        bounds = [ex.const(f"{name}:min", 0.0), ex.const(f"{name}:max", 6.0)]
        ex.node(layer, "Clip", [*xs, *bounds], out, shape, name=name)


def leaky_relu(imp, node):
    slope = nice(attributes(node).get("alpha", 0.01))
    imp.add_layer(node, {"op": "leaky_relu", "negative_slope": slope}, [imp.data(node)])


class LeakyRelu(Activation):
    op: Literal["leaky_relu"]
    negative_slope: Float32 = 0.01
    onnx_converters = {"LeakyRelu": leaky_relu}
    variants = ({}, {"negative_slope": 0.2}, {"negative_slope": -1.5})

    def apply(self, x):
        return np.where(x >= 0, x, x * np.float32(self.negative_slope)).astype(np.float32, copy=False)

    def c_expr(self, v):
        return f"({v} >= 0.0f ? {v} : {v} * {float(self.negative_slope)!r}f)"

    def torch(self, x):
        return _torch()[1].leaky_relu(x, self.negative_slope)

    def export_onnx(self, ex, xs, out, shape, layer, name):
        ex.node(layer, "LeakyRelu", xs, out, shape, name=name, alpha=float(self.negative_slope))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """In place, 1 / (1 + exp(-x)). Below x = -88 exp overflows to inf and 1 / inf is the right 0;
    the tanh form, 0.5 (tanh(x/2) + 1), would cancel to nothing from x = -17 on (silu off by 44%)."""
    with np.errstate(over="ignore"):
        np.exp(np.negative(x, out=x), out=x)
    return np.reciprocal(np.add(x, 1, out=x), out=x)


class Sigmoid(Activation):
    op: Literal["sigmoid"]
    onnx_op = "Sigmoid"
    onnx_converters = {"Sigmoid": functools.partial(plain, "sigmoid")}

    def apply(self, x):
        return _sigmoid(x)

    def c_expr(self, v):
        return f"(1.0f / (1.0f + EXPF(-{v})))"

    def torch(self, x):
        return _torch()[0].sigmoid(x)


class Tanh(Activation):
    op: Literal["tanh"]
    onnx_op = "Tanh"
    onnx_converters = {"Tanh": functools.partial(plain, "tanh")}

    def apply(self, x):
        return np.tanh(x, out=x)

    def c_expr(self, v):
        return f"TANHF({v})"

    def torch(self, x):
        return _torch()[0].tanh(x)


def gelu(imp, node):
    approximate = attributes(node).get("approximate", "none")
    layer = {"op": "gelu"} if approximate == "none" else {"op": "gelu", "approximate": approximate}
    imp.add_layer(node, layer, [imp.data(node)])


def match_erf_gelu(imp, erf):
    """0.5 * x * (1 + erf(x / sqrt(2))): PyTorch's export of GELU before opset 20, the factors in any order."""
    scale = imp.producer.get(erf.input[0])
    if scale is None or imp.only_consumer(scale.output[0], "Erf") is not erf or len(scale.input) != 2:
        return None
    x, c = scale.input
    if imp.is_const(x) and scale.op_type == "Mul":
        x, c = c, x
    factor = imp.consts.get(c)
    if not ((scale.op_type == "Div" and is_close(factor, math.sqrt(2)))
            or (scale.op_type == "Mul" and is_close(factor, 1 / math.sqrt(2)))):
        return None
    plus = imp.only_consumer(erf.output[0], "Add")
    if plus is None or not is_close(imp.consts.get(other_input(plus, erf.output[0]) or ""), 1.0):
        return None
    members, tensor, kinds = [scale, erf, plus], plus.output[0], []

    def kind(t: str) -> str:
        if t == x:
            return "x"
        if is_close(imp.consts.get(t), 0.5):
            return "half"
        half_x = imp.producer.get(t)
        if half_x is not None and half_x.op_type == "Mul" and imp.only_consumer(t, "Mul") is not None:
            other = other_input(half_x, x)
            if other is not None and is_close(imp.consts.get(other), 0.5):
                members.append(half_x)
                return "half_x"
        return "other"

    complete = (["half", "x"], ["half_x"])  # the factors multiplying (1 + erf): x and 0.5, or (0.5 * x)
    while len(kinds) < 2 and sorted(kinds) not in complete:
        mul = imp.only_consumer(tensor, "Mul")
        factor = other_input(mul, tensor) if mul is not None else None
        if factor is None:
            return None
        kinds.append(kind(factor))
        members.append(mul)
        tensor = mul.output[0]
    if sorted(kinds) not in complete:
        return None
    return members, lambda imp, node: imp.add_layer(node, {"op": "gelu"}, [imp.tensor(x)])


class Gelu(Activation):
    op: Literal["gelu"]
    approximate: Literal["none", "tanh"] = "none"
    onnx_converters = {"Gelu": gelu}
    onnx_patterns = {"Erf": match_erf_gelu}
    variants = ({}, {"approximate": "none"}, {"approximate": "tanh"})

    def apply(self, x):
        with np.errstate(all="ignore"):  # overflow in the tails saturates, as it should
            step, temporaries = (_gelu_tanh, 1) if self.approximate == "tanh" else (_gelu_erf, 2)
            return _in_blocks(_contiguous(x), step, temporaries)

    @property
    def label(self):
        return "gelu_tanh" if self.approximate == "tanh" else "gelu"

    def c_expr(self, v):
        if self.approximate == "tanh":
            # 0.5 x (1 + tanh u) written as x sigmoid(2u) = x / (1 + exp(-2u)): exact at the tails in every
            # dialect (x / inf is -0 far left, NaN at -inf, as PyTorch), where a tanh that stops short of
            # -1 would leave 1 + tanh u at 6e-8, times x
            return f"({v} / (1.0f + EXPF(-1.5957691216057308f * ({v} + 0.044715f * {v} * {v} * {v}))))"
        return f"(0.5f * {v} * (1.0f + ERFF({v} * 0.7071067811865476f)))"

    def torch(self, x):
        return _torch()[1].gelu(x, approximate=self.approximate)

    def export_onnx(self, ex, xs, out, shape, layer, name):
        # an ONNX op from opset 20 on: the exporter picks that opset for networks with GELU
        ex.node(layer, "Gelu", xs, out, shape, name=name, approximate=self.approximate)


def match_silu(imp, sigmoid):
    """x * sigmoid(x): PyTorch's export of SiLU (there is no ONNX op for it before opset 24)."""
    x = sigmoid.input[0]
    mul = imp.only_consumer(sigmoid.output[0], "Mul")
    if mul is None or sorted(mul.input) != sorted([x, sigmoid.output[0]]):
        return None
    return [sigmoid, mul], lambda imp, node: imp.add_layer(node, {"op": "silu"}, [imp.tensor(x)])


class Silu(Activation):
    op: Literal["silu"]
    onnx_patterns = {"Sigmoid": match_silu}

    def apply(self, x):
        return _in_blocks(_contiguous(x), _silu, 1)

    def c_expr(self, v):
        return f"({v} / (1.0f + EXPF(-{v})))"

    def torch(self, x):
        return _torch()[1].silu(x)

    def export_onnx(self, ex, xs, out, shape, layer, name):  # no ONNX op before opset 24: x * sigmoid(x)
        gate = ex.node(layer, "Sigmoid", xs, f"{name}:sigmoid", shape, name=f"{name}:sigmoid")
        ex.node(layer, "Mul", [xs[0], gate], out, shape, name=name)


def match_hardswish(imp, gate):
    """x * HardSigmoid(x): PyTorch's export of Hardswish before opset 14 (no HardSwish op yet)."""
    x = gate.input[0]
    mul = imp.only_consumer(gate.output[0], "Mul")
    if mul is None or sorted(mul.input) != sorted([x, gate.output[0]]) or not is_pytorch_hardsigmoid(gate):
        return None
    return [gate, mul], lambda imp, node: imp.add_layer(node, {"op": "hardswish"}, [imp.tensor(x)])


class Hardswish(Activation):
    op: Literal["hardswish"]
    onnx_op = "HardSwish"
    onnx_converters = {"HardSwish": functools.partial(plain, "hardswish")}
    onnx_patterns = {"HardSigmoid": match_hardswish}

    def apply(self, x):
        return _in_blocks(_contiguous(x), _hardswish, 1)

    def c_expr(self, v):
        return f"({v} * min_nan(max_nan({v} + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f))"

    def torch(self, x):
        return _torch()[1].hardswish(x)


def is_pytorch_hardsigmoid(node) -> bool:
    a = attributes(node)
    return is_close(np.float32(a.get("alpha", 0.2)), 1 / 6) and is_close(np.float32(a.get("beta", 0.5)), 0.5)


def hardsigmoid(imp, node):
    a = attributes(node)
    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
    if not is_pytorch_hardsigmoid(node):
        raise Unsupported(f"HardSigmoid(alpha={alpha:g}, beta={beta:g}) has no cnngraph layer; hardsigmoid is "
                          "PyTorch's, alpha=1/6 and beta=0.5")
    imp.add_layer(node, {"op": "hardsigmoid"}, [imp.data(node)])


class Hardsigmoid(Activation):
    """PyTorch's relu6(x + 3) / 6, ONNX's HardSigmoid(alpha=1/6, beta=0.5): the gate of MobileNetV3's
    squeeze-excitation."""
    op: Literal["hardsigmoid"]
    onnx_converters = {"HardSigmoid": hardsigmoid}

    def apply(self, x):
        x += 3
        np.clip(x, 0, 6, out=x)
        return np.multiply(x, np.float32(1 / 6), out=x)

    def c_expr(self, v):
        return f"(min_nan(max_nan({v} + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f))"

    def torch(self, x):
        return _torch()[1].hardsigmoid(x)

    def export_onnx(self, ex, xs, out, shape, layer, name):
        ex.node(layer, "HardSigmoid", xs, out, shape, name=name, alpha=1 / 6, beta=0.5)


class Hardtanh(Activation):
    """Clamp to [min_val, max_val], by default [-1, 1] (nn.Hardtanh)."""
    op: Literal["hardtanh"]
    min_val: Float32 = -1.0
    max_val: Float32 = 1.0
    variants = ({}, {"min_val": -0.5, "max_val": 2.0})

    @model_validator(mode="after")
    def _check(self):
        if self.min_val > self.max_val:
            raise invalid(f"min_val {self.min_val:g} must not exceed max_val {self.max_val:g}", field="min_val")
        return self

    def apply(self, x):
        return np.clip(x, np.float32(self.min_val), np.float32(self.max_val), out=x)

    def c_expr(self, v):
        return f"min_nan(max_nan({v}, {float(self.min_val)!r}f), {float(self.max_val)!r}f)"

    def torch(self, x):
        return _torch()[1].hardtanh(x, self.min_val, self.max_val)

    def export_onnx(self, ex, xs, out, shape, layer, name):
        bounds = [ex.const(f"{name}:min", self.min_val), ex.const(f"{name}:max", self.max_val)]
        ex.node(layer, "Clip", [*xs, *bounds], out, shape, name=name)


class Clamp(Activation):
    """`torch.clamp(x, min, max)`, either bound optional: ONNX's Clip with other bounds than relu's
    and relu6's."""
    op: Literal["clamp"]
    min: Float32 | None = None
    max: Float32 | None = None
    onnx_converters = {"Clip": clip}
    variants = ({"min": -0.5, "max": 1.5}, {"min": -0.5}, {"max": 0.25})

    @model_validator(mode="after")
    def _check(self):
        if self.min is None and self.max is None:
            raise invalid("give min, max or both", field="min")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise invalid(f"min {self.min:g} must not exceed max {self.max:g}", field="min")
        return self

    def apply(self, x):
        return np.clip(x, None if self.min is None else np.float32(self.min),
                       None if self.max is None else np.float32(self.max), out=x)

    def c_expr(self, v):
        if self.min is not None:
            v = f"max_nan({v}, {float(self.min)!r}f)"
        return v if self.max is None else f"min_nan({v}, {float(self.max)!r}f)"

    def torch(self, x):
        return _torch()[0].clamp(x, self.min, self.max)

    def export_onnx(self, ex, xs, out, shape, layer, name):
        bounds = [ex.const(f"{name}:min", self.min) if self.min is not None else "",
                  ex.const(f"{name}:max", self.max) if self.max is not None else ""]
        ex.node(layer, "Clip", [*xs, *bounds], out, shape, name=name)


def _name_to_object(value):
    """The `activation` field takes "relu" as shorthand for {"op": "relu"}."""
    return {"op": value} if isinstance(value, str) else value


def apply_activation(act: Activation, out: np.ndarray) -> np.ndarray:
    """`act` applied to `out` in place (activations that cannot work in place are copied back)."""
    result = act.apply(out)
    if result is not out:
        np.copyto(out, result)
    return out


_TaggedActivation = Annotated[Union[tuple(Annotated[cls, Field(title=cls.__name__)] for cls in ACTIVATIONS.values())],
                              Field(discriminator="op")]
ActivationField = Annotated[  # the type of conv2d's and linear's `activation` field
    _TaggedActivation,
    # the schema shows both forms editors should accept: a name, or an object with parameters
    BeforeValidator(_name_to_object, json_schema_input_type=Union[Literal[tuple(ACTIVATIONS)], _TaggedActivation]),
]
_ACTIVATION_ADAPTER = TypeAdapter(ActivationField)


def make_activation(data: str | dict) -> Activation:
    """An activation model from its name or its fields ({"op": "leaky_relu", "negative_slope": 0.2})."""
    return _ACTIVATION_ADAPTER.validate_python(data)
