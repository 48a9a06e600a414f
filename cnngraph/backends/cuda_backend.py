"""The CUDA backend (CuPy): one RawModule per compiled network (NVRTC, cached on disk by CuPy),
one arena allocation, and after the first call the whole Program captured as a CUDA graph and
replayed, so small batches are not eaten by launch overhead. CuPy is imported lazily."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np

from ..codegen.dialects import CUDA
from ..codegen.lower import lower, lower_node
from ..codegen.nvrtc import COMPILE_OPTIONS
from ..errors import DeviceError
from ..kernel_cache import cache_key, entry_path, read_entry, write_entry
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


def _cached_choice(entry: bytes | None, count: int) -> tuple[int, float, float] | None:
    """A cached autotuning choice (pick, its ms, the default's ms), or None when there is none or
    it is not one this node could have made."""
    try:
        pick, ms, default_ms = json.loads(entry) if entry is not None else (None, None, None)
    except (ValueError, TypeError):
        return None
    valid = (type(pick) is int and 0 <= pick < count and all(type(t) is float for t in (ms, default_ms)))
    return (pick, ms, default_ms) if valid else None


class CudaBackend(ProgramBackend):
    device = "cuda"

    def __init__(self, g: nx.DiGraph, cuda_graph: bool = True, autotune: bool = False):
        reason = cuda_unavailable_reason()
        if reason:
            raise DeviceError(f'device "cuda" is not usable: {reason}')
        import cupy as cp
        self.cp = cp
        self.arena = cp.empty(max(1, g.graph["arena_size"]), cp.float32)
        self.views = {n: self.arena[g.nodes[n]["offset"]:g.nodes[n]["offset"] + g.nodes[n]["size"]]
                      for n in [*g.graph["inputs"], *g.graph["order"]]}
        self.schedules = {}  # node -> the schedule the autotuner chose
        self.tuning = self._autotune(g) if autotune else {}
        program = lower(g, {node: pick for node, (pick, _, _) in self.tuning.items()})
        super().__init__(program)
        self.module = cp.RawModule(code=program.source(CUDA), options=COMPILE_OPTIONS)
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
        with self.stream:
            self.arena.fill(np.nan)
        self.stream.synchronize()

    def _autotune(self, g: nx.DiGraph, repeats: int = 5) -> dict[str, tuple[int, float, float]]:
        """Time every candidate schedule of every conv/linear node on this GPU (all compiled in one
        module) and keep the fastest: node -> (pick, its ms, the default's ms). Choices are kept
        in the kernel cache by (GPU, candidate kernels), so a layer tuned before is not timed
        again. The chosen schedules are kept in `self.schedules` (node -> templates.Schedule)."""
        gpu = self._gpu_identity()
        candidates, keys, counts = [], {}, {}  # candidates: (node, pick, launches, constants)
        for index, node in enumerate(g.graph["order"]):
            counts[node] = lower_node(g, node, {}, 0)[0].schedules
            if counts[node] < 2:
                continue
            bodies = []
            for pick in range(counts[node]):
                constants: dict = {}
                launches = lower_node(g, node, constants, pick)
                bodies += [launch.body for launch in launches]
                for launch in launches:  # unique names across every candidate in the module
                    launch.rename(f"{launch.kernel}_n{index}_s{pick}")
                candidates.append((node, pick, launches, constants))
            keys[node] = cache_key("autotune", gpu, *COMPILE_OPTIONS, *bodies)
        chosen = {}
        for node, key in keys.items():
            entry = read_entry(path) if (path := entry_path("autotune", key)) else None
            if (choice := _cached_choice(entry, counts[node])) is not None:
                chosen[node] = choice
        untimed = [c for c in candidates if c[0] not in chosen]
        timed = self._time_candidates(untimed, repeats) if untimed else {}
        for node, choice in timed.items():
            if path := entry_path("autotune", keys[node]):
                write_entry(path, json.dumps(choice).encode())
        chosen.update(timed)
        schedule_of = {(node, pick): launches[0].schedule for node, pick, launches, _ in candidates}
        self.schedules = {node: schedule_of[node, pick] for node, (pick, _, _) in chosen.items()}
        return chosen

    def _time_candidates(self, candidates: list, repeats: int) -> dict[str, tuple[int, float, float]]:
        """node -> (fastest pick, its ms, the default pick's ms)."""
        cp = self.cp
        module = cp.RawModule(code=CUDA.render("\n".join(l.body for c in candidates for l in c[2])),
                              options=COMPILE_OPTIONS)
        workspace = cp.empty(max(1, max(l.workspace for c in candidates for l in c[2])), cp.float32)
        timings: dict[str, list[tuple[float, int]]] = {}
        for node, pick, launches, constants in candidates:
            buffers = {"tensor": self.views, "workspace": {"": workspace},
                       "const": {k: cp.asarray(v) for k, v in constants.items()}}
            calls = [(module.get_function(l.kernel), l.grid, l.block,
                      tuple(buffers[kind][ref] for kind, ref in l.args)) for l in launches]

            def run():
                for fn, grid, block, args in calls:
                    fn(grid, block, args)

            run()  # warm: loads the kernel
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            for _ in range(repeats):
                run()
            end.record()
            end.synchronize()
            timings.setdefault(node, []).append((cp.cuda.get_elapsed_time(start, end) / repeats, pick))
        return {node: (min(t)[1], min(t)[0], next(ms for ms, p in t if p == 0)) for node, t in timings.items()}

    def _gpu_identity(self) -> str:
        cp = self.cp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return (f"{name} sm_{props['major']}{props['minor']} driver {cp.cuda.runtime.driverGetVersion()} "
                f"cupy {cp.__version__}")

    def _upload(self, name, x):
        view = self.views[name]
        if isinstance(x, self.cp.ndarray):  # it may still be being written on the caller's stream
            self.stream.wait_event(self.cp.cuda.get_current_stream().record())
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
