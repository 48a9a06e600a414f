"""Elementwise activations: as layers of their own and as the `activation` field of conv2d/linear.

Each activation is a small parameter model (`Relu`, `LeakyRelu(negative_slope)`, ...) with a NumPy
implementation that works in place; the layer of the same op is that model plus `name`/`inputs`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field, TypeAdapter

from .base import Float32, Layer, Strict


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (NumPy has none): Abramowitz & Stegun 7.1.26, |error| < 1.5e-7."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


class Activation(Strict):
    """Base of the activation parameter models. `apply` may overwrite `x` and returns the result."""

    def apply(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def c_expr(self, v: str) -> str:
        """The activation of C variable `v`, in the neutral kernel dialect (codegen/dialects.py)."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        return self.op


class Relu(Activation):
    op: Literal["relu"]

    def apply(self, x):
        return np.maximum(x, 0, out=x)

    def c_expr(self, v):
        return f"max_nan({v}, 0.0f)"


class Relu6(Activation):
    op: Literal["relu6"]

    def apply(self, x):
        return np.clip(x, 0, 6, out=x)

    def c_expr(self, v):
        return f"min_nan(max_nan({v}, 0.0f), 6.0f)"


class LeakyRelu(Activation):
    op: Literal["leaky_relu"]
    negative_slope: Float32 = 0.01

    def apply(self, x):
        return np.where(x >= 0, x, x * np.float32(self.negative_slope)).astype(np.float32, copy=False)

    def c_expr(self, v):
        return f"({v} >= 0.0f ? {v} : {v} * {float(self.negative_slope)!r}f)"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """In place. 1/(1+exp(-x)) overflows for x << 0; 0.5*(tanh(x/2)+1) is the same and stable."""
    np.tanh(np.multiply(x, 0.5, out=x), out=x)
    return np.multiply(np.add(x, 1, out=x), 0.5, out=x)


class Sigmoid(Activation):
    op: Literal["sigmoid"]

    def apply(self, x):
        return _sigmoid(x)

    def c_expr(self, v):
        return f"(1.0f / (1.0f + EXPF(-{v})))"


class Tanh(Activation):
    op: Literal["tanh"]

    def apply(self, x):
        return np.tanh(x, out=x)

    def c_expr(self, v):
        return f"TANHF({v})"


class Gelu(Activation):
    op: Literal["gelu"]
    approximate: Literal["none", "tanh"] = "none"

    def apply(self, x):
        x64 = x.astype(np.float64)
        if self.approximate == "tanh":
            inner = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
            return (0.5 * x64 * (1 + np.tanh(inner))).astype(np.float32)
        return (0.5 * x64 * (1 + _erf(x64 / np.sqrt(2)))).astype(np.float32)

    @property
    def label(self):
        return "gelu_tanh" if self.approximate == "tanh" else "gelu"

    def c_expr(self, v):
        if self.approximate == "tanh":
            return f"(0.5f * {v} * (1.0f + TANHF(0.7978845608028654f * ({v} + 0.044715f * {v} * {v} * {v}))))"
        return f"(0.5f * {v} * (1.0f + ERFF({v} * 0.7071067811865476f)))"


class Silu(Activation):
    op: Literal["silu"]

    def apply(self, x):
        return x * _sigmoid(x.copy())

    def c_expr(self, v):
        return f"({v} / (1.0f + EXPF(-{v})))"


class Hardswish(Activation):
    op: Literal["hardswish"]

    def apply(self, x):
        return x * np.clip(x + 3, 0, 6) * np.float32(1 / 6)

    def c_expr(self, v):
        return f"({v} * min_nan(max_nan({v} + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f))"


ACTIVATIONS: tuple[type[Activation], ...] = (Relu, Relu6, LeakyRelu, Sigmoid, Tanh, Gelu, Silu, Hardswish)
ACTIVATION_OPS = [get_args(cls.model_fields["op"].annotation)[0] for cls in ACTIVATIONS]


def _name_to_object(value):
    """The `activation` field takes "relu" as shorthand for {"op": "relu"}."""
    return {"op": value} if isinstance(value, str) else value


_TaggedActivation = Annotated[Union[tuple(Annotated[cls, Field(title=cls.__name__)] for cls in ACTIVATIONS)],
                              Field(discriminator="op")]
ActivationField = Annotated[
    _TaggedActivation,
    # the schema shows both forms editors should accept: a name, or an object with parameters
    BeforeValidator(_name_to_object, json_schema_input_type=Union[Literal[tuple(ACTIVATION_OPS)], _TaggedActivation]),
]


def apply_activation(act: Activation, out: np.ndarray) -> np.ndarray:
    """`act` applied to `out` in place (activations that cannot work in place are copied back)."""
    result = act.apply(out)
    if result is not out:
        np.copyto(out, result)
    return out


_ACTIVATION_ADAPTER = TypeAdapter(ActivationField)


def make_activation(data: str | dict) -> Activation:
    """An activation model from its name or its fields ({"op": "leaky_relu", "negative_slope": 0.2})."""
    return _ACTIVATION_ADAPTER.validate_python(data)


class ActivationLayer(Layer):
    """An activation written as a layer: shape-preserving (the base rule), any input rank."""

    def run_numpy(self, xs, params, scratch, out):
        np.copyto(out, xs[0])
        return apply_activation(self, out)


def _layer_of(act: type[Activation]) -> type[BaseModel]:
    return type(act.__name__ + "Layer", (ActivationLayer, act), {"__doc__": f"The {act.__name__} activation as a layer."})


ACTIVATION_LAYERS = tuple(_layer_of(cls) for cls in ACTIVATIONS)
