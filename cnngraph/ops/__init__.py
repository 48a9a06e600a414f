"""The op vocabulary: every layer type of the spec format, each defined once in its module.

Importing this package imports every module in it, and each `Layer` subclass with an `op`
registers itself in `OPS`: a new op is a new module here (or, for an activation, a new class in
activation.py), and the spec format, the passes, the backends, the ONNX importer and exporter and
the tests pick it up from the registry."""

import importlib
import pkgutil

from .base import (ACTIVATION, ANY_LAYOUT, ELEMENTWISE, GEMM, KEEPS_LAYOUT, OPS, POOL, TRAITS, Example, Layer, Scratch,
                   Shape, fmt_shape, ops_with)

# the first modules in this order (it is the order of the ops in the JSON Schema), then any others
_FIRST = ("conv", "linear", "norm", "activation", "pool", "tensor")
for _module in [*_FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _FIRST)]:
    importlib.import_module(f"{__name__}.{_module}")

from .activation import ACTIVATIONS, Activation, ActivationField, make_activation  # noqa: E402
from .epilogue import Activate, Residual, ScaleShift  # noqa: E402
from .norm import batch_norm_scale_shift  # noqa: E402

def _module_rank(cls: type[Layer]) -> int:
    module = cls.__module__.rsplit(".", 1)[-1]
    return _FIRST.index(module) if module in _FIRST else len(_FIRST)


# ops by module in the order above, then in definition order: the schema's and the messages' order
_ordered = sorted(OPS.items(), key=lambda item: _module_rank(item[1]))
OPS.clear()
OPS.update(_ordered)
LAYER_TYPES: tuple[type[Layer], ...] = tuple(OPS.values())

__all__ = ["OPS", "LAYER_TYPES", "TRAITS", "GEMM", "ELEMENTWISE", "ACTIVATION", "POOL", "KEEPS_LAYOUT", "ANY_LAYOUT",
           "ops_with", "Example",
           "Layer", "Scratch", "Shape", "fmt_shape", "ACTIVATIONS", "Activation", "ActivationField",
           "make_activation", "Activate", "Residual", "ScaleShift", "batch_norm_scale_shift"]
