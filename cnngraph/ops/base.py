"""What every op declares, in one place: its spec fields (a Pydantic model), its shape rule, its
weights, its FLOPs, its NumPy implementation, its kernel lowering, its ONNX import and export, its
traits, and small examples with their PyTorch reference for the tests. Defining a `Layer` subclass
with an `op` registers it (`OPS`): passes, backends, the importer and the tests look ops up there.

Shapes handled by ops are per sample: (C, H, W) for images, (F,) for feature vectors. The NumPy
implementations work on batched arrays in the NumPy backend's layout: (N, H, W, C) for images
(channels last makes the im2col reduction contiguous) and (N, F) for vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, get_args

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ..errors import ShapeError, unprintable

Shape = tuple[int, ...]
# Every integer in a spec fits in 64 bits, as ONNX and PyTorch attributes do: a far larger one is a
# mistake, and its thousands of digits would flood the error message. (Sizes that fit but make a
# tensor too large to hold are shape errors, found by shape inference.)
INT64_MAX = 2**63 - 1
PositiveInt = Annotated[int, Field(ge=1, le=INT64_MAX)]
NonNegativeInt = Annotated[int, Field(ge=0, le=INT64_MAX)]
Int64 = Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
# A float parameter is used in float32 arithmetic: beyond float32's range it would become infinite
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _float32_range(value: float) -> float:
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"must be within float32's range (|x| <= 3.4e38), the precision kernels compute in; got {value:g}")
    return value


Float32 = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_float32_range)]


def _printable(name: str) -> str:
    """Names appear in messages, tables and file keys: a newline or a terminal escape in one is a mistake."""
    bad = next((c for c in name if unprintable(c)), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters, line breaks or bidirectional overrides, found "
                         f"{ascii(bad)}")
    return name


Name = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_printable)]
Pair = Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]
NonNegativePair = Annotated[list[NonNegativeInt], Field(min_length=2, max_length=2)]


def pair(value: int | list[int]) -> tuple[int, int]:
    """An int or an [h, w] list as an (h, w) tuple, as PyTorch's `_pair` does."""
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def invalid(message: str, field: str) -> PydanticCustomError:
    """A validation error raised from a model validator that still names the offending field."""
    return PydanticCustomError("invalid_value", message.replace("{", "(").replace("}", ")"), {"field": field})


def weight_key(layer: str, suffix: str) -> str:
    """A weight's key: `<layer>.<suffix>`, as in a PyTorch state_dict; the layer's own name for the
    empty suffix (a parameter that is an attribute of its module, as ConvNeXt's layer_scale)."""
    return f"{layer}.{suffix}" if suffix else layer


def fmt_shape(shape: Shape) -> str:
    """A per-sample shape as users see it, with the batch: (N,64,56,56)."""
    return "(" + ",".join(["N", *map(str, shape)]) + ")"


def he_init(shapes: dict[str, Shape], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He (Kaiming normal) weights over the fan-in (every weight dimension but the first), and
    PyTorch's uniform bias in +-1/sqrt(fan_in): for conv2d and linear."""
    fan_in = int(np.prod(shapes["weight"][1:]))
    weight = rng.standard_normal(shapes["weight"], dtype=np.float32)  # float32 throughout: 4 bytes per
    weight *= np.float32(math.sqrt(2 / fan_in))                         # weight at most, as the memory check counts
    out = {"weight": weight}
    if "bias" in shapes:
        bias = rng.random(shapes["bias"], dtype=np.float32) * 2 - 1
        out["bias"] = bias / np.float32(math.sqrt(fan_in))
    return out


class Strict(BaseModel):
    """Frozen; unknown fields are errors (a typo must never be ignored silently), and so are
    values of the wrong JSON type ("8" or true for an integer is not silently converted)."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


OPS: dict[str, type["Layer"]] = {}  # op name -> its layer model, in registration order

# What the passes and the memory plan ask of an op (`Layer.traits`):
GEMM = "gemm"                # conv2d/linear: an `activation` field, residual adds and an epilogue in its store
ELEMENTWISE = "elementwise"  # one output element per input element: takes an epilogue, may run in place
ACTIVATION = "activation"    # an elementwise function that is also a conv/linear `activation` field
POOL = "pool"                # a window reduction a conv may absorb into its store (fuse_pool)
# what its kernel does with a channels-last (NHWC) input (passes/assign_layout.py; `low.channels_last`)
KEEPS_LAYOUT = "keeps_layout"  # reads NCHW or NHWC images and writes its output in its inputs' layout
ANY_LAYOUT = "any_layout"      # reads NCHW or NHWC; its output has no spatial extent, the same in both
TRAITS = (GEMM, ELEMENTWISE, ACTIVATION, POOL, KEEPS_LAYOUT, ANY_LAYOUT)


def layout_free(shape: Shape) -> bool:
    """An image of per-sample `shape` (C, H, W) lies the same in memory NCHW and NHWC: one
    channel, or one pixel."""
    return len(shape) == 3 and (shape[0] == 1 or shape[1] * shape[2] == 1)


def ops_with(trait: str) -> tuple[str, ...]:
    """The names of the registered ops that have `trait`."""
    return tuple(op for op, cls in OPS.items() if trait in cls.traits)


@dataclass(frozen=True)
class Example:
    """A small instance of an op for the registry-driven tests: the layer's fields (without `op`),
    the per-sample shapes of its inputs, and a note on what it covers."""
    fields: dict
    inputs: tuple[Shape, ...] = ((3, 9, 10),)
    note: str = ""


class Layer(Strict):
    """Fields shared by every layer. Subclasses add `op: Literal[...]` and their parameters, and
    override what applies to them of the declarations below."""
    name: Name | None = Field(None, description="Unique layer name; names the weights. Default <op>_<index>.")
    inputs: list[str] | None = Field(None, min_length=1,
                                     description="Layers or network inputs read; default: the previous layer.")

    arity: ClassVar[tuple[int, int | None]] = (1, 1)  # (min, max) number of inputs; None: unbounded
    traits: ClassVar[frozenset[str]] = frozenset()     # from TRAITS
    moves_data_only: ClassVar[bool] = False             # no arithmetic: 0 FLOPs (reshape, concat, pad, ...)
    # ONNX import: op type -> converter(importer, node), and op type of a pattern's first node ->
    # matcher(importer, node) returning (member nodes, converter) or None (see interop/onnx_import.py)
    onnx_converters: ClassVar[dict[str, Callable]] = {}
    onnx_patterns: ClassVar[dict[str, Callable]] = {}
    examples: ClassVar[tuple[Example, ...]] = ()        # for the registry-driven tests

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("op")
        names = get_args(field.annotation) if field is not None else ()
        if len(names) == 1 and isinstance(names[0], str):  # a concrete op, not a shared base class
            if names[0] in OPS and OPS[names[0]].__qualname__ != cls.__qualname__:
                raise TypeError(f"op {names[0]!r} is defined twice: {OPS[names[0]].__qualname__} and {cls.__qualname__}")
            OPS[names[0]] = cls

    @classmethod
    def has(cls, trait: str) -> bool:
        return trait in cls.traits

    def runs_as_gemm(self, in_shapes: list[Shape]) -> bool:
        """Whether its products are a matrix multiplication that a reduced precision (tf32, on the
        tensor cores) applies to: conv/linear, but not a depthwise conv."""
        return self.has(GEMM)

    def layout_partners(self, in_shapes: list[Shape]) -> list[int] | None:
        """The inputs its kernel reads in its output's layout, NCHW or NHWC, when it keeps its
        inputs' layout (None: it reads and writes NCHW only). All of them for the ops with
        `KEEPS_LAYOUT` on images (a vector has no layout); for an elementwise op on images, those of
        the output's shape, its operands that broadcast (a (C, 1, 1) gate) being layout-free."""
        if not all(len(s) == 3 for s in in_shapes):
            return None
        if self.has(ELEMENTWISE):
            out = tuple(self.infer_shape(in_shapes))
            if not all(tuple(s) == out or layout_free(s) for s in in_shapes):
                return None
            return [i for i, s in enumerate(in_shapes) if tuple(s) == out]
        return list(range(len(in_shapes))) if self.has(KEEPS_LAYOUT) else None

    def keeps_layout(self, in_shapes: list[Shape]) -> bool:
        """Whether its kernel reads NCHW or NHWC and writes its output in its inputs' layout."""
        return self.layout_partners(in_shapes) is not None

    # --- shape rule ---------------------------------------------------------------------------
    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        """Output shape (per sample) from input shapes, or a ShapeError naming what was expected."""
        return in_shapes[0]

    def shape_error(self, message: str, field: str | None = None) -> ShapeError:
        return ShapeError(message, layer=self.name, field=field)

    def expect_image(self, shape: Shape) -> None:
        if len(shape) != 3:
            raise self.shape_error(f"{self.op} needs an image input (N,C,H,W), got {fmt_shape(shape)}")

    # --- weights ------------------------------------------------------------------------------
    def weight_shapes(self, in_shapes: list[Shape]) -> dict[str, Shape]:
        """Weight tensors by key suffix ("weight", "bias", ...) in PyTorch's layout."""
        return {}

    def init_weights(self, shapes: dict[str, Shape], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Deterministic initialisation when the user gives no weights."""
        return {}

    def channel_affine(self, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """For an op that is y = x * scale + shift per channel (batch norm at inference, scale): its
        (scale, shift) in float64, so the passes can fold it into the conv before it. None otherwise."""
        return None

    # --- cost ---------------------------------------------------------------------------------
    def flops(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        """Floating-point operations per sample (a multiply-add counts 2); none for an op that only
        moves data."""
        return 0 if self.moves_data_only else int(np.prod(out_shape))

    # --- NumPy implementation -----------------------------------------------------------------
    def prepare(self, weights: dict[str, np.ndarray], in_shapes: list[Shape]) -> dict:
        """Weights rearranged once, at compile time, for `run_numpy`."""
        return weights

    def run_numpy(self, xs: list[np.ndarray], params: dict, scratch: "Scratch", out: np.ndarray) -> np.ndarray:
        """Compute into `out` (preallocated in the backend's layout) and return it. `out` may share
        memory with an input only for elementwise ops (the memory plan's in-place reuse)."""
        raise NotImplementedError(type(self).__name__)

    def numpy_scratch_bytes(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        """Bytes of scratch `run_numpy` may hold beyond its output (im2col columns, say), for per-sample
        input shapes and the batched output shape."""
        return 0

    # --- kernels ------------------------------------------------------------------------------
    def lower(self, low) -> list:
        """The kernel launches of this node (codegen/lower.py `NodeLowering` says what `low` offers)."""
        raise NotImplementedError(f"no kernel for op {self.op}")

    # --- ONNX export --------------------------------------------------------------------------
    def to_onnx(self, ex, xs: list[str], out: str, shape: Shape) -> None:
        """Add the ONNX node(s) computing this layer from tensors `xs` into tensor `out`
        (interop/onnx_export.py `Exporter` says what `ex` offers)."""
        raise NotImplementedError(f"op {self.op} has no ONNX export")

    # --- reference, for the tests ---------------------------------------------------------------
    def torch_reference(self, xs: list, weights: dict):
        """This layer computed by PyTorch (float64 tensors in, one out): the tests' oracle for the
        op. Imports torch when called; the package never needs it otherwise."""
        raise NotImplementedError(f"op {self.op} declares no PyTorch reference")


class Scratch:
    """Reusable temporary buffers for the NumPy backend, so steady-state runs do not allocate
    large temporaries per layer. The im2col columns, the one buffer that would grow with the
    batch, are chunked to stay under `budget` bytes."""

    budget = 256 * 2**20  # bytes of im2col columns at most, whatever the batch size

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, key: str, shape: Shape, dtype=np.float32) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self._buffers.get(key)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = self._buffers[key] = np.empty(size, dtype)
        return buf[:size].reshape(shape)
