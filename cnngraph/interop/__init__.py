"""Interop with the tools users already have: ONNX models in and out, PyTorch weights in.

`onnx` is an optional dependency (`pip install onnx`), imported only when a function needs it;
torch is never imported: tensors are recognised by duck typing.
"""

from .onnx_export import export_onnx, to_onnx
from .onnx_import import SUPPORTED_OPS, from_onnx
from .torch_weights import weights_from_torch

__all__ = ["from_onnx", "export_onnx", "to_onnx", "weights_from_torch", "SUPPORTED_OPS"]
