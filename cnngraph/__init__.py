"""cnngraph: a declarative CNN compiler. A network written in JSON is validated, built into a
graph, optimized, and run by a backend: generated CUDA kernels where CuPy sees a GPU, the same
kernels as OpenCL C through PyOpenCL, or NumPy anywhere.

    spec = cnngraph.load_spec("examples/lenet5.json")
    model = cnngraph.compile(spec, batch_size=8)   # = cnngraph.bind(cnngraph.plan(spec, 8), "auto")
    y = model(x)   # float32 NCHW in, float32 out
"""

from .errors import (CnnGraphError, CnnGraphWarning, DeviceError, InputError, ResourceError, ShapeError, SpecError,
                     WeightsError)
from .interop import export_onnx, from_onnx, weights_from_torch
from .model import CompiledModel, Plan, bind, build, compile, plan
from .predict import predict
from .spec import NetworkSpec, load_spec, parse_spec
from .weights import load_weights, save_weights

__version__ = "0.1.0"

__all__ = ["CnnGraphError", "SpecError", "ShapeError", "WeightsError", "InputError", "DeviceError", "ResourceError",
           "CnnGraphWarning",
           "CompiledModel", "Plan", "NetworkSpec", "build", "compile", "plan", "bind", "load_spec", "parse_spec", "load_weights",
           "save_weights", "predict", "from_onnx", "export_onnx", "weights_from_torch", "__version__"]
