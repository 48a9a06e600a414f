"""What the CUDA and OpenCL backends share: compiling a Program once, placing its tensors in one
arena, and running its launches in order. A subclass supplies the device calls."""

from __future__ import annotations

import numpy as np

from ..codegen.lower import Program
from .base import Backend


class ProgramBackend(Backend):
    """Runs a lowered Program (the plan's, unless given another). Subclasses implement `_upload`,
    `_download`, `_launch_all` and `_launch_one` (the launch of that index alone)."""

    def __init__(self, plan, options: dict, program: Program | None = None):
        super().__init__(plan, options)
        self.program = plan.program if program is None else program

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, x in inputs.items():
            self._upload(name, x)
        self._launch_all()
        return {name: self._download(name) for name in self.program.outputs}

    def run_observed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, x in inputs.items():
            self._upload(name, x)
        launches = self.program.launches
        observed = {}
        for index, launch in enumerate(launches):
            self._launch_one(index)
            if index + 1 == len(launches) or launches[index + 1].node != launch.node:  # the node's last launch
                value = self._download(launch.node)
                observed[launch.node] = value.get() if hasattr(value, "__cuda_array_interface__") else value
        return observed

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.program.tensors[name][2]
