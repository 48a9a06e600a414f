"""Memory limits: what a compiled network will hold (weights + activation arena + scratch), the
default limit for a device, and the check that refuses a network before anything is allocated."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import networkx as nx
import numpy as np

from .errors import ResourceError, SpecError
from .graph import base_op, in_shapes
from .ops import fmt_shape
from .ops.conv import CACHE_CHUNK

RAM_FRACTION = 0.8   # of the machine's RAM, for the NumPy and OpenCL backends
GPU_FRACTION = 0.9   # of the GPU's memory, for CUDA (the driver and CuPy's pool keep some)
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
         "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a compiled network holds. `scratch` is an upper bound: the NumPy backend's largest
    im2col chunk plus room for a padded copy, the stride phases and a fused conv's pre-pool output
    of the largest tensor (the CUDA split-K workspace is smaller than that)."""
    weights: int
    arena: int
    scratch: int

    @property
    def total(self) -> int:
        return self.weights + self.arena + self.scratch

    def as_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "arena": self.arena, "scratch": self.scratch, "total": self.total}


def memory_need(g: nx.DiGraph, weight_shapes: dict[str, tuple[tuple[int, ...], str]]) -> MemoryNeed:
    """For a graph that has been through plan_memory; `weight_shapes`: key -> (shape, layer)."""
    largest = max((int(np.prod(g.nodes[n].get("conv_shape", g.nodes[n]["shape"]))) for n in g.graph["order"]),
                  default=0)  # a fused conv's pre-pool output lives in scratch
    columns = max((_columns_bytes(g, n) for n in g.graph["order"]), default=0)
    return MemoryNeed(weights=4 * sum(int(np.prod(shape)) for shape, _ in weight_shapes.values()),
                      arena=4 * g.graph["arena_size"], scratch=columns + 3 * 4 * largest)


def _columns_bytes(g: nx.DiGraph, node: str) -> int:
    """The im2col buffer of a conv node: its whole column matrix, or a cache-sized chunk of it (at
    least one output row) when larger (see ops/conv.py)."""
    if base_op(g, node) != "conv2d":
        return 0
    n, _, ho, wo = g.nodes[node].get("conv_shape", g.nodes[node]["shape"])
    taps = int(np.prod(g.nodes[node]["spec"].weight_shapes(in_shapes(g, node))["weight"][1:]))
    return min(4 * n * ho * wo * taps, max(CACHE_CHUNK, 4 * wo * taps))


def check_memory(g: nx.DiGraph, weight_shapes, limit: int, limit_source: str) -> MemoryNeed:
    """The network's MemoryNeed, or a ResourceError when it exceeds `limit` that names the layer
    of its largest tensor (an activation or a weight)."""
    need = memory_need(g, weight_shapes)
    if need.total <= limit:
        return need
    tensors = [(int(np.prod(shape)), f"output {fmt_shape(shape[1:])}", (g.nodes[n]["layers"] or [n])[0])
               for n in g.graph["order"] for shape in {g.nodes[n]["shape"], g.nodes[n].get("conv_shape", ())} if shape]
    tensors += [(int(np.prod(shape)), f'weight "{key}" {tuple(shape)}', layer)
                for key, (shape, layer) in weight_shapes.items()]
    size, what, layer = max(tensors)
    advice = "smaller layers" if what.startswith("weight") else "a smaller batch"
    raise ResourceError(
        f"the network needs {fmt_bytes(need.total)} at batch {g.graph['batch_size']} (weights "
        f"{fmt_bytes(need.weights)}, activations {fmt_bytes(need.arena)}, scratch {fmt_bytes(need.scratch)}), "
        f"over the limit of {fmt_bytes(limit)} ({limit_source}); its largest tensor is its {what}, "
        f"{fmt_bytes(4 * size)}; use {advice} or raise max_memory", layer=layer, file=g.graph.get("source"))


def default_memory_limit(device: str) -> tuple[int, str]:
    """The limit for `device` ("cpu", "opencl" or "cuda") and where it comes from, in words."""
    if device == "cuda":
        import cupy as cp
        total = cp.cuda.runtime.memGetInfo()[1]
        return int(GPU_FRACTION * total), f"default: {GPU_FRACTION:.0%} of the GPU's {fmt_bytes(total)}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(RAM_FRACTION * total), f"default: {RAM_FRACTION:.0%} of this machine's {fmt_bytes(total)} of RAM"


def parse_size(text: str | int) -> int:
    """Bytes from an int or a string like "512MiB", "8GB", "1.5g" (binary units for k/m/g/t)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise SpecError(f"max_memory must be a positive number of bytes, got {text}")
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS or float(match.group(1)) <= 0:
        raise SpecError(f'max_memory must be a size like 4096, "512MiB" or "8GB", got {text!r}')
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
