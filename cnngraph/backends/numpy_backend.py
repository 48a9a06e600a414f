"""The NumPy backend: runs the graph node by node in float32, channels-last inside.

Images are converted to (N, H, W, C) once at the input and back to (N, C, H, W) at the outputs,
so every conv reduces over contiguous channels. Weights are rearranged once, at construction.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..graph import in_shapes, layer_nodes
from ..ops import Scratch
from ..ops.epilogue import apply_numpy, residual_count


def to_backend_layout(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x  # NCHW -> NHWC


def from_backend_layout(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x  # NHWC -> NCHW


class NumpyBackend:
    device = "cpu"

    def __init__(self, g: nx.DiGraph):
        self.graph = g
        outputs = set(g.graph["outputs"])
        needed = set(outputs).union(*(nx.ancestors(g, o) for o in outputs))
        self.order = [n for n in layer_nodes(g) if n in needed]  # layers no output needs are skipped
        self.params = {n: g.nodes[n]["spec"].prepare(g.nodes[n].get("weights", {}), in_shapes(g, n)[:1])
                       for n in self.order}
        # free each intermediate right after its last reader
        self.last_use = {}
        for position, node in enumerate(self.order):
            for src in g.nodes[node]["inputs"]:
                self.last_use[src] = position
        self.scratch = Scratch()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g, keep = self.graph, set(self.graph.graph["outputs"])
        values = {name: to_backend_layout(x) for name, x in inputs.items()}
        for position, node in enumerate(self.order):
            attrs = g.nodes[node]
            xs = [values[src] for src in attrs["inputs"]]
            epilogue = attrs.get("epilogue", [])
            own = len(xs) - residual_count(epilogue)  # the op's own inputs; the rest are residuals
            out = attrs["spec"].run_numpy(xs[:own], self.params[node], self.scratch)
            values[node] = apply_numpy(out, epilogue, xs[own:]) if epilogue else out
            for src in set(attrs["inputs"]):
                if self.last_use.get(src) == position and src not in keep:
                    del values[src]
        return {name: from_backend_layout(values[name]) for name in g.graph["outputs"]}
