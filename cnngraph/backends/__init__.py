"""Backends execute a plan: `cpu` (NumPy, always available), `cuda` (CuPy, with a GPU) and `opencl`
(PyOpenCL); the last two run the plan's lowered Program of generated kernels. Each implements the
interface of `base.Backend` and registers itself by its device name in `BACKENDS`."""

from .base import BACKENDS, Backend
from .numpy_backend import NumpyBackend  # noqa: F401  (registers "cpu"; the order is "auto"'s listing)
from .cuda_backend import CudaBackend  # noqa: F401
from .opencl_backend import OpenCLBackend  # noqa: F401

__all__ = ["BACKENDS", "Backend"]
