"""What every op declares, in one place: its spec fields (a Pydantic model), its shape rule,
its weights, its FLOPs and its NumPy implementation.

Shapes handled by ops are per sample: (C, H, W) for images, (F,) for feature vectors. The NumPy
implementations work on batched arrays in the NumPy backend's layout: (N, H, W, C) for images
(channels last makes the im2col reduction contiguous) and (N, F) for vectors.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Annotated, ClassVar

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ..errors import UNPRINTABLE, ShapeError

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
    bad = next((c for c in name if unicodedata.category(c) in UNPRINTABLE), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters or line breaks, found {bad!r}")
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


class Layer(Strict):
    """Fields shared by every layer. Subclasses add `op: Literal[...]` and their parameters."""
    name: Name | None = Field(None, description="Unique layer name; names the weights. Default <op>_<index>.")
    inputs: list[str] | None = Field(None, min_length=1,
                                     description="Layers or network inputs read; default: the previous layer.")

    arity: ClassVar[tuple[int, int | None]] = (1, 1)  # (min, max) number of inputs; None: unbounded

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

    # --- cost ---------------------------------------------------------------------------------
    def flops(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        """Floating-point operations per sample (a multiply-add counts 2)."""
        return int(np.prod(out_shape))

    # --- NumPy implementation -----------------------------------------------------------------
    def prepare(self, weights: dict[str, np.ndarray], in_shapes: list[Shape]) -> dict:
        """Weights rearranged once, at compile time, for `run_numpy`."""
        return weights

    def run_numpy(self, xs: list[np.ndarray], params: dict, scratch: "Scratch", out: np.ndarray) -> np.ndarray:
        """Compute into `out` (preallocated in the backend's layout) and return it. `out` may share
        memory with an input only for elementwise ops (the memory plan's in-place reuse)."""
        raise NotImplementedError(type(self).__name__)


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
