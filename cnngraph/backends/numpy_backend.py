"""The NumPy backend: runs the graph node by node in float32, channels-last inside, every tensor
in its planned place in one arena (see passes/plan_memory.py), so steady-state calls allocate no
layer outputs (fresh allocations cost page faults that rival the arithmetic).

Images are (N, H, W, C) inside, so every conv reduces over contiguous channels; they are
converted from (N, C, H, W) at the inputs and back at the outputs. Weights are rearranged once.
"""

from __future__ import annotations

import time

import networkx as nx
import numpy as np

from ..graph import in_shapes
from ..ops import Scratch
from ..ops.epilogue import apply_numpy, residual_count


def backend_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)  # NCHW -> NHWC


def from_backend_layout(x: np.ndarray) -> np.ndarray:
    """A fresh NCHW (or (N, F)) array: results must not alias the arena, which the next call reuses."""
    return (x.transpose(0, 3, 1, 2) if x.ndim == 4 else x).copy(order="C")


class NumpyBackend:
    device = "cpu"

    def __init__(self, g: nx.DiGraph):
        self.graph = g
        self.order = g.graph["order"]
        arena = np.empty(max(1, g.graph["arena_size"]), np.float32)
        self.views = {n: arena[g.nodes[n]["offset"]:g.nodes[n]["offset"] + g.nodes[n]["size"]]
                      .reshape(backend_shape(g.nodes[n]["shape"])) for n in [*g.graph["inputs"], *self.order]}
        self.arena = arena
        self.params = {}
        for n in self.order:
            own = len(g.nodes[n]["inputs"]) - residual_count(g.nodes[n].get("epilogue", []))
            self.params[n] = g.nodes[n]["spec"].prepare(g.nodes[n].get("weights", {}), in_shapes(g, n)[:own])
        self.scratch = Scratch()

    def poison(self) -> None:
        self.arena.fill(np.nan)

    def run(self, inputs: dict[str, np.ndarray], timings: dict[str, float] | None = None) -> dict[str, np.ndarray]:
        """Outputs by name; with `timings`, adds each node's seconds to it (for profiling)."""
        with np.errstate(all="ignore"):  # NaN and Inf propagate silently, as on every other backend and in PyTorch
            return self._run(inputs, timings)

    def _run(self, inputs, timings):
        g, views = self.graph, self.views
        for name, x in inputs.items():
            np.copyto(views[name], x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)
        for node in self.order:
            if "alias_of" in g.nodes[node]:
                continue  # a free reshape: its view already shows its input's bytes
            start = time.perf_counter()
            attrs = g.nodes[node]
            xs = [views[src] for src in attrs["inputs"]]
            epilogue = attrs.get("epilogue", [])
            own = len(xs) - residual_count(epilogue)  # the op's own inputs; the rest are residuals
            pool = attrs.get("pool")  # a fused pool: the conv result lives in scratch, not the arena
            target = self.scratch.get("fused_conv", backend_shape(attrs["conv_shape"])) if pool else views[node]
            out = attrs["spec"].run_numpy(xs[:own], self.params[node], self.scratch, target)
            if epilogue:
                apply_numpy(out, epilogue, xs[own:])
            if pool:
                pool.run_numpy([out], {}, self.scratch, views[node])
            if timings is not None:
                timings[node] = timings.get(node, 0.0) + time.perf_counter() - start
        return {name: from_backend_layout(views[name]) for name in g.graph["outputs"]}
