"""Memory limits: what a compiled network will hold (weights + activation arena + scratch), the
default limit for a device, and the check that refuses a network before anything is allocated."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import networkx as nx

from .errors import ResourceError, SpecError, shorten
from .graph import layer_nodes
from .ops import fmt_shape

RAM_FRACTION = 0.8   # of the machine's RAM, for the NumPy and OpenCL backends
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
         "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}
MAX_SIZE = 2**64  # bytes: more than any machine holds, so a larger max_memory is a mistake


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a compiled network holds. `scratch` is the backend's upper bound on its temporaries
    (the NumPy backend's im2col chunks and padded copies, the GPU's split-K workspace)."""
    weights: int
    arena: int
    scratch: int

    @property
    def total(self) -> int:
        return self.weights + self.arena + self.scratch


def planned_need(g: nx.DiGraph, weight_shapes: dict, weight_copies: int, scratch: int, element_bytes: int = 4
                 ) -> MemoryNeed:
    """For a graph that has been through plan_memory; `weight_shapes`: key -> (shape, layer).
    `weight_copies`, `scratch` and the arena's `element_bytes` are the backend's (see backends/base.py)."""
    return MemoryNeed(weights=weight_copies * _weight_bytes(weight_shapes),
                      arena=element_bytes * g.graph["arena_size"], scratch=scratch)


def least_need(g: nx.DiGraph, weight_shapes: dict, weight_copies: int, element_bytes: int = 4) -> MemoryNeed:
    """What any plan of the graph needs at least: its weights and its largest tensor. Checked
    before the weights exist; the full plan needs the optimized graph, which needs the weights."""
    largest = max(math.prod(g.nodes[n]["shape"]) for n in layer_nodes(g))
    return MemoryNeed(weights=weight_copies * _weight_bytes(weight_shapes), arena=element_bytes * largest, scratch=0)


def _weight_bytes(weight_shapes: dict) -> int:
    return 4 * sum(math.prod(shape) for shape, _ in weight_shapes.values())


def check_memory(g: nx.DiGraph, need: MemoryNeed, weight_shapes: dict, limit: int, limit_source: str) -> None:
    """A ResourceError when `need` exceeds `limit`, naming the layer of the largest tensor (an
    activation or a weight)."""
    if need.total <= limit:
        return
    tensors = []
    for n in layer_nodes(g):
        layers = g.nodes[n].get("layers") or [n]
        tensors.append((math.prod(g.nodes[n]["shape"]), f"output {fmt_shape(g.nodes[n]['shape'][1:])}", layers[-1]))
        if (pool := g.nodes[n]["compute"].pool) is not None:  # a fused conv's output before its pool
            shape = pool.conv_shape
            tensors.append((math.prod(shape), f"output {fmt_shape(shape[1:])}", layers[0]))
    tensors += [(math.prod(shape), f'weight "{key}" {tuple(shape)}', layer) for key, (shape, layer) in weight_shapes.items()]
    size, what, layer = max(tensors)
    advice = "smaller layers" if what.startswith("weight") else "a smaller batch"
    raise ResourceError(
        f"the network needs {'at least ' if not need.scratch else ''}{fmt_bytes(need.total)} at batch "
        f"{g.graph['batch_size']} (weights {fmt_bytes(need.weights)}, activations {fmt_bytes(need.arena)}, scratch "
        f"{fmt_bytes(need.scratch)}), over the limit of {fmt_bytes(limit)} ({limit_source}); its largest tensor is "
        f"its {what}, {fmt_bytes(4 * size)}; use {advice} or raise max_memory", layer=layer, file=g.graph.get("source"))


def ram_limit() -> tuple[int | None, str]:
    """The default limit of the backends that run in the machine's memory, and where it comes
    from, in words; None when the machine's memory cannot be found out."""
    total, what = machine_memory()
    if total is None:
        return None, "no default: this machine's memory is unknown"
    return int(RAM_FRACTION * total), f"default: {RAM_FRACTION:.0%} of {what}, {fmt_bytes(total)}"


CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v2, v1


def machine_memory() -> tuple[int | None, str]:
    """The memory this process may use: physical RAM, or a container's (cgroup) limit when lower."""
    total, what = None, "this machine's RAM"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        pass
    for path in CGROUP_LIMITS:
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):  # "max" or a huge number: no limit
            total, what = int(text), "this container's memory limit"
    left = address_space_left()
    if left is not None and (total is None or left < total):
        total, what = left, "the address space `ulimit -v` leaves this process"
    return total, what


def address_space_left() -> int | None:
    """What RLIMIT_AS (`ulimit -v`) leaves this process: its soft limit less the address space
    already mapped (the interpreter, NumPy, BLAS buffers); None when there is no such limit."""
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, ValueError, OSError):  # no `resource` module on Windows
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    return max(0, soft - _mapped_bytes())


def _mapped_bytes() -> int:
    """The address space this process has mapped (Linux's VmSize), 0 where unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def parse_size(text: str | int) -> int:
    """Bytes (at least 1) from an int or a string like "512MiB", "8GB", "1.5g" (binary units for k/m/g/t)."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text) if isinstance(text, str) else None
        if not match or match.group(2).lower() not in UNITS:
            raise SpecError(f'max_memory must be a number of bytes or a size like "512MiB" or "8GB", '
                            f"got {shorten(repr(text))}")
        size = float(match.group(1)) * UNITS[match.group(2).lower()]  # inf for 400 digits: refused below
    if size > MAX_SIZE:  # not shown: an int of 5000 digits has no repr
        raise SpecError("max_memory must be at most 2**64 bytes (16 EiB), more than any machine holds")
    if size < 1:
        raise SpecError(f"max_memory must be at least 1 byte, got {text!r}")
    return int(size)


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
