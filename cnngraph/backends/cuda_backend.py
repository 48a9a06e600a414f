"""The CUDA backend (CuPy): one RawModule per compiled network (NVRTC, cached on disk by CuPy),
one arena allocation, and after the first call the whole Program captured as a CUDA graph and
replayed, so small batches are not eaten by launch overhead. CuPy is imported lazily."""

from __future__ import annotations

import numpy as np

from ..codegen.dialects import CUDA
from ..codegen.lower import Program
from ..errors import DeviceError
from .program_backend import ProgramBackend


def cuda_unavailable_reason() -> str | None:
    """None when CuPy sees a usable GPU, else why not (one line)."""
    try:
        import cupy as cp
    except ImportError:
        return "CuPy is not installed (pip install -e \".[cuda12]\" or \".[cuda13]\")"
    except Exception as err:  # a broken CUDA install raises all sorts
        return f"CuPy failed to load: {err}"
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA GPU"
    except Exception as err:
        return f"CuPy sees no usable CUDA GPU: {str(err).splitlines()[0]}"
    return None


class CudaBackend(ProgramBackend):
    device = "cuda"

    def __init__(self, program: Program, cuda_graph: bool = True):
        super().__init__(program)
        reason = cuda_unavailable_reason()
        if reason:
            raise DeviceError(f'device "cuda" is not usable: {reason}')
        import cupy as cp
        self.cp = cp
        self.module = cp.RawModule(code=program.source(CUDA), options=("-std=c++11",))
        self.arena = cp.empty(max(1, program.arena_size), cp.float32)
        self.views = {name: self.arena[offset:offset + size] for name, (offset, size, _) in program.tensors.items()}
        self.constants = {key: cp.asarray(value) for key, value in program.constants.items()}
        self.workspace = cp.empty(max(1, program.workspace_size), cp.float32)
        buffers = {"tensor": self.views, "const": self.constants, "workspace": {"": self.workspace}}
        self.launches = []
        for launch in program.launches:
            fn = self.module.get_function(launch.kernel)
            args = tuple(buffers[kind][ref] for kind, ref in launch.args)
            self.launches.append((fn, launch.grid, launch.block, args))
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.use_graph = cuda_graph
        self.graph = None
        self.calls = 0

    def poison(self) -> None:
        self.arena.fill(np.nan)

    def _upload(self, name, x):
        view = self.views[name]
        with self.stream:
            if isinstance(x, self.cp.ndarray):
                view[...] = x.reshape(-1)
            else:
                view.set(np.ascontiguousarray(x, np.float32).reshape(-1), stream=self.stream)

    def _launch_all(self):
        self.calls += 1
        with self.stream:
            if self.graph is not None:
                self.graph.launch(self.stream)
            elif self.use_graph and self.calls > 1:  # kernels are loaded and warm: capture once, replay after
                self.stream.begin_capture()
                for fn, grid, block, args in self.launches:
                    fn(grid, block, args)
                self.graph = self.stream.end_capture()
                self.graph.launch(self.stream)
            else:
                for fn, grid, block, args in self.launches:
                    fn(grid, block, args)

    def _download(self, name):
        with self.stream:
            return self.views[name].reshape(self.tensor_shape(name)).copy()

    def run(self, inputs):
        outputs = super().run(inputs)
        self.stream.synchronize()
        return outputs
