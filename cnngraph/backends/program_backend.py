"""What the CUDA and OpenCL backends share: compiling a Program once, placing its tensors in one
arena, and running its launches in order. A subclass supplies the device calls.

At fp16/bf16 the arena holds 16-bit patterns (`element_bytes`): inputs are rounded to them on
the way in (`stored`), outputs converted back to float32 on the way out (`loaded`)."""

from __future__ import annotations

import numpy as np

from ..codegen.lower import Program
from ..passes.assign_layout import NHWC
from ..precision import HALF_STORAGE, element_bytes, from_storage, to_storage
from .base import Backend


class ProgramBackend(Backend):
    """Runs a lowered Program (the plan's, unless given another). Subclasses implement `_upload`,
    `_download`, `_launch_all` and `_launch_one` (the launch of that index alone)."""

    def __init__(self, plan, options: dict, program: Program | None = None):
        super().__init__(plan, options)
        self.program = plan.program if program is None else program
        self.half = self.program.precision in HALF_STORAGE
        self.element_bytes = element_bytes(self.program.precision)

    def stored(self, x, xp=np, name: str | None = None):
        """float32 values as the arena stores them (numpy or cupy, as `xp` says); those of tensor
        `name` in its layout (NHWC where the program keeps it channels-last, zeros after its
        channels where it pads them)."""
        if self._channels_last(name):
            x = x.transpose(0, 2, 3, 1)
            padded = self.program.padded_channels.get(name)
            if padded:
                x = xp.concatenate([x, xp.zeros((*x.shape[:3], padded - x.shape[3]), x.dtype)], axis=3)
        x = xp.ascontiguousarray(x, dtype=xp.float32)
        return to_storage(x, self.program.precision, xp) if self.half else x

    def loaded(self, x, xp=np, name: str | None = None):
        """Arena elements as float32 values; `x` given in `arena_shape(name)`, NCHW out."""
        x = from_storage(x, self.program.precision, xp) if self.half else x
        if self._channels_last(name):
            x = xp.ascontiguousarray(x.transpose(0, 3, 1, 2)[:, :self.tensor_shape(name)[1]])
        return x

    def arena_shape(self, name: str) -> tuple[int, ...]:
        """The shape of a tensor's elements in the order the arena holds them."""
        n, c, *spatial = shape = self.tensor_shape(name)
        return (n, *spatial, self.program.padded_channels.get(name, c)) if self._channels_last(name) else shape

    def _channels_last(self, name: str | None) -> bool:
        return name is not None and self.program.layout(name) == NHWC

    def poison_value(self) -> np.ndarray:
        """One NaN element as the arena stores it."""
        return self.stored(np.full(1, np.nan, np.float32))

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

    def run_node_by_node(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every computed node's output (NCHW, as `run_observed` gives it) when the node's kernels
        read `values` (every network input and computed node by name, e.g. another backend's
        `run_observed`) instead of what this backend computed before: each node checked apart
        from the rounding of the nodes before it. An alias reads its source's value."""
        g, launches, outputs = self.plan.graph, self.program.launches, {}
        for index, launch in enumerate(launches):
            if index == 0 or launches[index - 1].node != launch.node:  # the node's first launch
                for name in g.nodes[launch.node]["inputs"]:
                    source = g.nodes[name].get("alias_of", name)
                    self._upload(name, np.asarray(values[source]).reshape(self.tensor_shape(name)))
            self._launch_one(index)
            if index + 1 == len(launches) or launches[index + 1].node != launch.node:
                value = self._download(launch.node)
                outputs[launch.node] = value.get() if hasattr(value, "__cuda_array_interface__") else value
        return outputs

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.program.tensors[name][2]
