"""What the CUDA and OpenCL backends share: compiling a Program once, placing its tensors in one
arena, and running its launches in order. A subclass supplies the device calls."""

from __future__ import annotations

import numpy as np

from ..codegen.lower import Program


class ProgramBackend:
    """Runs a lowered Program. Subclasses implement `_upload`, `_download`, `_launch_all`."""

    device = "?"

    def __init__(self, program: Program):
        self.program = program

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, x in inputs.items():
            self._upload(name, x)
        self._launch_all()
        return {name: self._download(name) for name in self.program.outputs}

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.program.tensors[name][2]
