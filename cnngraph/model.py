"""`compile` = `plan` (spec -> graph -> passes -> memory plan, no device) + `bind` (a backend), and the
callable `CompiledModel` it returns."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import networkx as nx
import numpy as np

from .backends import BACKENDS, Backend
from .codegen.lower import Program, lower
from .errors import DeviceError, InputError, SpecError, quote, shorten
from .graph import build_graph, in_shapes, layer_nodes
from .ops.base import weight_key
from .passes.assign_layout import assign_layout
from .passes.assign_precision import assign_precision
from .passes.infer_shapes import infer_shapes
from .passes.pipeline import optimize_graph
from .passes.plan_memory import plan_memory
from .precision import check_precision, element_bytes
from .report import summary_table
from .resources import MemoryNeed, check_memory, least_need, parse_size, planned_need
from .spec import NetworkSpec, load_spec, parse_spec
from .weights import check_weights, expected_shapes, init_weights, load_weights

DEVICES = ("auto", *BACKENDS)  # "cuda:N" picks one GPU too
DEVICE_FORMS = "auto, cpu, cuda, cuda:N (GPU N, from 0), opencl"


def parse_device(device: str) -> tuple[str, int | None]:
    """("cuda", 1) for "cuda:1", ("cpu", None) for "cpu"; a DeviceError naming the valid forms."""
    kind, colon, index = device.partition(":") if isinstance(device, str) else ("", "", "")
    if kind in DEVICES and not colon:
        return kind, None
    if kind == "cuda" and index.isdigit() and index.isascii():
        return kind, int(index)
    raise DeviceError(f"unknown device {quote(device)}; valid: {DEVICE_FORMS}")


def as_spec(spec: NetworkSpec | str | Path | Mapping[str, Any]) -> NetworkSpec:
    """A spec as every entry point takes it: parsed, a file's path, or a dict of its JSON data."""
    if isinstance(spec, NetworkSpec):
        return spec
    if isinstance(spec, Mapping):
        return parse_spec(dict(spec))
    if isinstance(spec, (str, os.PathLike)):
        return load_spec(spec)
    raise SpecError(f"a spec must be a NetworkSpec, a file path or a dict of its JSON data, got {type(spec).__name__}"
                    + (" (decode the bytes, or pass json.loads(...))" if isinstance(spec, (bytes, bytearray)) else ""))


def require_flag(name: str, value) -> None:
    """A flag is a bool: an array or a string given instead would be taken by its truth value (or
    fail deep inside), and `optimize="no"` would mean yes."""
    if not isinstance(value, (bool, np.bool_)):
        raise SpecError(f"{name} must be True or False, got {type(value).__name__}")


def build(spec: NetworkSpec | str | Path | Mapping, batch_size: int = 1) -> nx.DiGraph:
    """The raw graph with shapes and FLOPs (no weights, no passes): what `cnngraph validate` checks."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise SpecError(f"batch_size must be a positive integer, got {batch_size!r}")
    return infer_shapes(build_graph(as_spec(spec), batch_size))


@dataclass
class Plan:
    """A network compiled as far as it goes without a device: the optimized, memory-planned graph
    with its weights bound (folded where a pass folded them) and, lowered on first use, its Program
    of kernel launches. `inspect`, `codegen`, the HTML report and `export_onnx` read a plan;
    `bind` turns one into a callable model."""
    spec: NetworkSpec
    graph: nx.DiGraph
    weights: dict[str, np.ndarray]      # by key, as given or seeded: the unoptimized network's weights
    random_weights: bool                # the seeded initialisation was used
    expected: dict                      # weight key -> (shape, layer), for the memory check

    @cached_property
    def program(self) -> Program:
        return lower(self.graph)

    @property
    def batch_size(self) -> int:
        return self.graph.graph["batch_size"]

    @property
    def precision(self) -> str:
        return self.graph.graph["precision"]


def plan(spec: NetworkSpec | str | Path | Mapping, batch_size: int = 1,
         weights: str | Path | Mapping[str, np.ndarray] | None = None, seed: int = 0, optimize: bool = True,
         limit: tuple[float, str, int] | None = None, precision: str = "fp32") -> Plan:
    """Validate, build, shape-check, bind the weights, optimize and plan the memory of a network.
    Touches no device. `limit`: (bytes, where the limit comes from, weight copies the backend will
    hold), checked before any weight is read or made. `precision`: "fp32", "tf32", "fp16" or
    "bf16" (cnngraph/precision.py)."""
    spec = as_spec(spec)
    g = build(spec, batch_size)
    require_flag("optimize", optimize)
    check_precision(precision)  # refused before any weight is read
    expected = expected_shapes(g)
    if limit is not None:
        size, source, copies = limit
        check_memory(g, least_need(g, expected, copies, element_bytes(precision)), expected, size,
                     source)  # before any weight exists
    if weights is None:
        bound, random_weights = init_weights(g, seed), True
    else:
        file = None if isinstance(weights, Mapping) else str(weights)
        bound, random_weights = check_weights(load_weights(weights, expected), expected, file), False
    for node in layer_nodes(g):  # each node takes the keys its op declares
        suffixes = g.nodes[node]["compute"].spec.weight_shapes(in_shapes(g, node))
        g.nodes[node]["weights"] = {suffix: bound[weight_key(node, suffix)] for suffix in suffixes}
    g = optimize_graph(g) if optimize else g.copy()
    assign_precision(g, precision)  # on the final nodes
    assign_layout(g)  # channels-last where only tensor-core convs write and read a tensor
    g = plan_memory(g)
    return Plan(spec, g, bound, random_weights, expected)


def bind(p: Plan, device: str = "auto", max_memory: int | str | None = None, **options) -> "CompiledModel":
    """The callable model of plan `p` on `device` ("auto", "cpu", "cuda", "cuda:N", "opencl"); `options` go to
    the backend (cuda_graph, autotune). The memory the plan needs on that backend is checked
    against `max_memory` (default: the backend's) before anything is allocated."""
    if not isinstance(p, Plan):
        raise SpecError(f"bind takes a Plan (what cnngraph.plan returns), got {type(p).__name__}")
    backend_class, index, note = resolve_backend(device)
    with backend_class.selecting(index):  # the queries and the allocations are about that device
        if reason := backend_class.unsupported_precision(p.precision):
            raise DeviceError(reason)
        size, source = memory_limit(backend_class, max_memory)
        need = planned_need(p.graph, p.expected, backend_class.weight_copies, backend_class.scratch_bytes(p),
                            backend_class.arena_element_bytes(p.precision))
        check_memory(p.graph, need, p.expected, size, source)  # the final plan, still before allocating it
        return CompiledModel(p, backend_class(p, options), device_note=note, memory=need)


def compile(spec: NetworkSpec | str | Path | Mapping, batch_size: int = 1, device: str = "auto",
            weights: str | Path | Mapping[str, np.ndarray] | None = None, seed: int = 0,
            optimize: bool = True, cuda_graph: bool = True, autotune: bool = False,
            max_memory: int | str | None = None, precision: str = "fp32") -> "CompiledModel":
    """`plan` then `bind`: validate, build, shape-check and optimize a network, and bind it to a backend.

    device: "auto" (CUDA when CuPy sees a GPU, else NumPy), "cpu", "cuda" (the current GPU),
    "cuda:N" (GPU N: every allocation, launch and graph capture of the model is on it) or "opencl".
    cuda_graph: on CUDA, capture the whole network as a CUDA graph after the first call.
    autotune: on CUDA, time each conv/linear layer's candidate schedules (tiles, split-K) on the
    GPU while compiling and keep the fastest (slower to compile; ignored by other backends).
    max_memory: bytes (or a size like "8GiB") the network may hold: weights + activations +
    scratch. Default: 80% of the machine's RAM, or 90% of the GPU's memory on CUDA. A network
    over it raises ResourceError before anything is allocated.
    precision: "fp32" (default); "tf32": conv/linear products of TF32-rounded operands on the
    tensor cores (sm_80+), accumulated in float32; "fp16" / "bf16": every activation and the
    conv/linear weights stored in 16 bits, computed and accumulated in float32. The CPU backends
    round the same way, so they show the accuracy a GPU gives (cnngraph/precision.py)."""
    spec = as_spec(spec)
    build(spec, batch_size)  # a bad spec or batch size is reported before the device is looked at
    require_flag("cuda_graph", cuda_graph)
    require_flag("autotune", autotune)
    check_precision(precision)  # an unknown precision, before the device is looked at
    backend_class, index, _ = resolve_backend(device)
    with backend_class.selecting(index):
        if reason := backend_class.unsupported_precision(precision):
            raise DeviceError(reason)
        size, source = memory_limit(backend_class, max_memory)
    p = plan(spec, batch_size, weights, seed, optimize, limit=(size, source, backend_class.weight_copies),
             precision=precision)
    return bind(p, device, max_memory, cuda_graph=cuda_graph, autotune=autotune)


def resolve_backend(device: str) -> tuple[type[Backend], int | None, str | None]:
    """The backend class for `device`, the device index it names ("cuda:1"), and a note on why
    "auto" chose the class."""
    kind, index = parse_device(device)
    if kind == "auto":
        reason = BACKENDS["cuda"].unavailable()
        if reason is None:
            return BACKENDS["cuda"], None, "CUDA GPU found"
        return BACKENDS["cpu"], None, f"NumPy backend: {reason}"
    if reason := BACKENDS[kind].unavailable():
        raise DeviceError(f'device "{device}" is not usable: {reason}')
    return BACKENDS[kind], index, None


def memory_limit(backend_class: type[Backend], max_memory: int | str | None) -> tuple[float, str]:
    """The limit in bytes (inf when unknown) and where it comes from, in words."""
    size, source = (parse_size(max_memory), "max_memory") if max_memory is not None else backend_class.memory_limit()
    return float("inf") if size is None else size, source


def _on_gpu(x) -> bool:
    """A CuPy (or other CUDA) array, recognised without importing CuPy."""
    return hasattr(x, "__cuda_array_interface__")


class CompiledModel:
    """A network compiled for one batch size. Call it on float32 NCHW arrays."""

    def __init__(self, plan: Plan, backend: Backend, device_note: str | None = None, memory: MemoryNeed | None = None):
        self.plan, self.backend = plan, backend
        self.spec, self.graph, self.weights = plan.spec, plan.graph, plan.weights
        self.random_weights = plan.random_weights  # True when the seeded initialisation was used
        self.device_note = device_note  # why device="auto" chose this backend
        self.memory = memory  # the bytes it holds: weights, arena, scratch (bound)
        self.batch_size = plan.batch_size
        self.precision = plan.precision
        self.input_shapes = {i.name: (self.batch_size, *i.shape) for i in self.spec.inputs}
        self.output_names = list(self.graph.graph["outputs"])
        self._calls = threading.Lock()  # one call at a time: every backend reuses one arena (and CUDA its stream)

    @property
    def device(self) -> str:
        """Where it runs, as `compile(device=...)` takes it: "cpu", "opencl", or "cuda:N" (the GPU
        it is pinned to)."""
        return self.backend.device_name

    def __call__(self, x):
        """`x`: one array, or a dict by input name when the network has several inputs. Returns one
        array, or a dict by output name when it has several outputs. Safe from several threads:
        calls run one after another (each result is its own array)."""
        if isinstance(x, Mapping):
            given = dict(x)
        elif len(self.input_shapes) == 1:
            given = {next(iter(self.input_shapes)): x}
        else:
            raise InputError(f"this network has inputs {', '.join(self.input_shapes)}; pass a dict by name")
        unknown = set(given) - set(self.input_shapes)
        missing = set(self.input_shapes) - set(given)
        if unknown or missing:
            raise InputError(f"inputs must be exactly {', '.join(self.input_shapes)}; "
                             f"got {', '.join(map(shorten, given)) or 'none'}")  # keys of any type
        arrays = {name: self._check_input(name, value) for name, value in given.items()}
        with self._calls:
            outputs = self.backend.run(arrays)
        if not any(_on_gpu(x) for x in arrays.values()):  # NumPy in, NumPy out
            outputs = {k: v.get() if _on_gpu(v) else v for k, v in outputs.items()}
        return outputs[self.output_names[0]] if len(self.output_names) == 1 else outputs

    def _check_input(self, name: str, x):
        if _on_gpu(x) and self.backend.device != "cuda":
            raise InputError(f'input "{name}" is a GPU array but the model runs on {self.device}; pass a numpy array')
        where = getattr(getattr(x, "device", None), "id", None)  # a CuPy array's GPU
        if _on_gpu(x) and where is not None and f"cuda:{where}" != self.device:
            raise InputError(f'input "{name}" is on cuda:{where} but the model runs on {self.device}; '
                             "copy it there (under cupy.cuda.Device) or pass a numpy array")
        if not isinstance(x, np.ndarray) and not _on_gpu(x):
            raise InputError(f'input "{name}" must be a numpy (or, on CUDA, cupy) array, got {type(x).__name__}')
        if x.dtype != np.float32:
            raise InputError(f'input "{name}" must be float32, got {x.dtype} (use x.astype(np.float32))')
        want = self.input_shapes[name]
        if x.shape != want:
            raise InputError(f'input "{name}" must have shape {want} (compiled for batch {self.batch_size}), '
                             f"got {x.shape}")
        return x

    def summary(self) -> str:
        return summary_table(self.graph)

    def __repr__(self) -> str:
        return f"<CompiledModel {self.spec.name} batch={self.batch_size} device={self.device} precision={self.precision}>"
