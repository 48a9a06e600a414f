"""The NumPy backend: runs the graph node by node in float32, channels-last inside, every tensor
in its planned place in one arena (see passes/plan_memory.py), so steady-state calls allocate no
layer outputs (fresh allocations cost page faults that rival the arithmetic).

Images are (N, H, W, C) inside, so every conv reduces over contiguous channels; they are
converted from (N, C, H, W) at the inputs and back at the outputs. Weights are rearranged once.

At tf32 a GEMM node's weight and input are rounded to TF32 as the GPU rounds them (the input into
scratch), so the float32 products are exactly the tensor cores' products; a node whose writer
stores it rounded to TF32 (`tf32_stored`) is rounded after it is computed. At fp16/bf16 the arena
stays float32 but every tensor is rounded to the 16-bit values the GPU stores, when it is stored
(inputs, each node's output), and so are the GEMM weights.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..graph import own_in_shapes
from ..ops import Scratch
from ..ops.epilogue import apply_numpy
from ..precision import HALF_STORAGE, round_storage, round_tf32
from ..resources import ram_limit
from .base import Backend


def backend_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else tuple(shape)  # NCHW -> NHWC


def from_backend_layout(x: np.ndarray) -> np.ndarray:
    """A fresh NCHW (or (N, F)) array: results must not alias the arena, which the next call reuses."""
    return (x.transpose(0, 3, 1, 2) if x.ndim == 4 else x).copy(order="C")


class NumpyBackend(Backend):
    device = "cpu"
    weight_copies = 2  # the weights given, and each op's copy rearranged for its NumPy code (`prepare`)

    @classmethod
    def memory_limit(cls) -> tuple[int | None, str]:
        return ram_limit()

    @classmethod
    def arena_element_bytes(cls, precision: str) -> int:
        return 4  # computes in float32 in place; reduced precisions are emulated by rounding

    @classmethod
    def scratch_bytes(cls, plan) -> int:
        """The largest op scratch (im2col columns) plus room for a padded copy, the stride phases and
        a fused conv's pre-pool output of the largest tensor; at tf32 the rounded input of a GEMM
        node and the masks of its rounding (4 + 3 bytes an element); at fp16/bf16 the temporaries
        of rounding the largest tensor (14 bytes an element)."""
        g = plan.graph
        computes = [(n, g.nodes[n]["compute"]) for n in g.graph["order"]]
        inputs = [math.prod(g.nodes[src]["shape"]) for n, _ in computes for src in g.nodes[n]["inputs"]]  # padded copies
        largest = max([*(math.prod(c.result_shape(g.nodes[n]["shape"])) for n, c in computes), *inputs], default=0)
        own = max((c.spec.numpy_scratch_bytes(own_in_shapes(g, n), c.result_shape(g.nodes[n]["shape"]))
                   + (4 * math.prod(g.nodes[g.nodes[n]["inputs"][0]]["shape"]) if c.gated else 0)  # x * gate
                   + (7 * math.prod(g.nodes[g.nodes[n]["inputs"][0]]["shape"]) if c.precision == "tf32" else 0)
                   for n, c in computes), default=0)
        rounding = 14 * largest if g.graph.get("precision") in HALF_STORAGE else 0
        return own + 3 * 4 * largest + rounding

    def __init__(self, plan, options: dict | None = None):
        super().__init__(plan, options or {})
        g = self.graph = plan.graph
        self.order = g.graph["order"]
        arena = np.empty(max(1, g.graph["arena_size"]), np.float32)
        # unpadded: NumPy keeps every tensor NHWC with its own channels (`size` counts a GPU arena's padding)
        self.views = {n: arena[g.nodes[n]["offset"]:g.nodes[n]["offset"] + math.prod(g.nodes[n]["shape"])]
                      .reshape(backend_shape(g.nodes[n]["shape"])) for n in [*g.graph["inputs"], *self.order]}
        self.arena = arena
        self.params = {}
        for n in self.order:
            weights = g.nodes[n].get("weights", {})
            precision = g.nodes[n]["compute"].precision  # conv and linear: their "weight" is the GEMM operand
            if precision == "tf32":
                weights = {**weights, "weight": round_tf32(weights["weight"])}
            elif precision in HALF_STORAGE:  # stored in 16 bits on a GPU
                weights = {**weights, "weight": weights["weight"].copy()}
                round_storage(weights["weight"], precision)
            self.params[n] = g.nodes[n]["compute"].spec.prepare(weights, own_in_shapes(g, n))
        self.scratch = Scratch()
        self.storage = g.graph.get("precision", "fp32")  # what the GPU stores: rounded to it at each store

    def poison(self) -> None:
        self.arena.fill(np.nan)

    def run(self, inputs: dict[str, np.ndarray], timings: dict[str, float] | None = None,
            observed: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Outputs by name; with `timings`, adds each node's seconds to it (for profiling); with
        `observed`, puts a copy of each node's output in it (see `run_observed`)."""
        with np.errstate(all="ignore"):  # NaN and Inf propagate silently, as on every other backend and in PyTorch
            return self._run(inputs, timings, observed)

    def time_launches(self, inputs):
        timings: dict[str, float] = {}
        self.run(inputs, timings=timings)
        return [((node, node), seconds) for node, seconds in timings.items()]

    def run_observed(self, inputs):
        observed: dict[str, np.ndarray] = {}
        self.run(inputs, observed=observed)
        return observed

    def _run(self, inputs, timings, observed=None):
        g, views = self.graph, self.views
        for name, x in inputs.items():
            np.copyto(views[name], x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)
            round_storage(views[name], self.storage)
        for node in self.order:
            if "alias_of" in g.nodes[node]:
                continue  # a free reshape: its view already shows its input's bytes
            start = time.perf_counter()
            compute = g.nodes[node]["compute"]
            xs = [views[src] for src in g.nodes[node]["inputs"]]
            if compute.gated:  # x * gate, (N, H, W, C) * (N, 1, 1, C), in scratch instead of the arena
                gated = np.multiply(xs[0], xs[1], out=self.scratch.get("gated", xs[0].shape))
                round_storage(gated, self.storage)  # as the mul would have stored it (the GPU kernels do)
                xs = [gated, *xs[2:]]
            if compute.precision == "tf32":
                xs = [round_tf32(xs[0], out=self.scratch.get("tf32", xs[0].shape)), *xs[1:]]
            own = len(xs) - compute.residuals  # the op's own inputs; the rest are residuals
            pool = compute.pool  # a fused pool: the conv result lives in scratch, not the arena
            target = self.scratch.get("fused_conv", backend_shape(pool.conv_shape)) if pool else views[node]
            out = compute.spec.run_numpy(xs[:own], self.params[node], self.scratch, target)
            if compute.epilogue:
                apply_numpy(out, compute.epilogue, xs[own:])
            if pool:
                pool.spec.run_numpy([out], {}, self.scratch, views[node])
            round_storage(views[node], self.storage)
            if g.nodes[node].get("tf32_stored"):
                round_tf32(views[node], out=views[node])
            if timings is not None:
                timings[node] = timings.get(node, 0.0) + time.perf_counter() - start
            if observed is not None:
                observed[node] = from_backend_layout(views[node])
        return {name: from_backend_layout(views[name]) for name in g.graph["outputs"]}
