"""The CUDA backend (CuPy): one RawModule per compiled network (NVRTC, cached on disk by CuPy),
one arena allocation, and after the first call the whole Program captured as a CUDA graph and
replayed, so small batches are not eaten by launch overhead. CuPy is imported lazily."""

from __future__ import annotations

from ..codegen.autotune import autotune, choose
from ..codegen.dialects import CUDA
from ..codegen.lower import Program, lower
from ..codegen.nvrtc import COMPILE_OPTIONS, NvrtcError
from ..errors import DeviceError
from ..precision import HALF_STORAGE, TENSOR_CORE_ARCH
from ..progress import progress_bar
from ..resources import fmt_bytes
from .program_backend import ProgramBackend

GPU_FRACTION = 0.9   # of the GPU's memory, the default limit (the driver and CuPy's pool keep some)


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


class CudaBackend(ProgramBackend):
    """options: `cuda_graph` (capture the whole network as a CUDA graph after the first call) and
    `autotune` (time each conv/linear layer's candidate schedules on the GPU, keep the fastest)."""
    device = "cuda"
    weight_copies = 1  # the host's copy is not on the GPU, whose memory the limit is about

    @classmethod
    def unavailable(cls) -> str | None:
        return cuda_unavailable_reason()

    @classmethod
    def selecting(cls, index: int | None):
        import cupy as cp
        if index is None:
            return cp.cuda.Device()  # the current one
        count = cp.cuda.runtime.getDeviceCount()
        if index >= count:
            raise DeviceError(f'device "cuda:{index}" does not exist: CuPy sees {count} GPU(s), '
                              f"cuda:0 to cuda:{count - 1}")
        return cp.cuda.Device(index)

    @classmethod
    def unsupported_precision(cls, precision: str) -> str | None:
        if precision not in TENSOR_CORE_ARCH:
            return None
        import cupy as cp
        device = cp.cuda.Device()
        major, minor = divmod(int(device.compute_capability), 10)
        if (major, minor) >= TENSOR_CORE_ARCH[precision]:
            return None
        props = cp.cuda.runtime.getDeviceProperties(device.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        need = "sm_{}{}".format(*TENSOR_CORE_ARCH[precision])
        return (f'precision "{precision}" needs tensor cores of {need} or newer; this GPU, {name}, is '
                f'sm_{major}{minor}: it runs precision "fp32"')

    @classmethod
    def memory_limit(cls) -> tuple[int | None, str]:
        import cupy as cp
        total = cp.cuda.runtime.memGetInfo()[1]
        return int(GPU_FRACTION * total), f"default: {GPU_FRACTION:.0%} of the GPU's {fmt_bytes(total)}"

    @classmethod
    def scratch_bytes(cls, plan) -> int:
        # an autotuned schedule may split twice as far
        return 2 * 4 * (plan.program.workspace_size + plan.program.counters_size)

    def __init__(self, plan, options: dict, program: Program | None = None):
        reason = cuda_unavailable_reason()
        if reason:
            raise DeviceError(f'device "cuda" is not usable: {reason}')
        import cupy as cp
        self.cp = cp
        self.gpu_id = cp.cuda.Device().id  # bind made the chosen GPU current: pinned for every later call
        g = plan.graph
        self.arena = cp.empty(max(1, g.graph["arena_size"]), cp.uint16 if plan.precision in HALF_STORAGE else cp.float32)
        self.views = {n: self.arena[g.nodes[n]["offset"]:g.nodes[n]["offset"] + g.nodes[n]["size"]]
                      for n in [*g.graph["inputs"], *g.graph["order"]]}
        self.tuning, self.schedules = {}, {}  # node -> (pick, its ms, default's ms); node -> the schedule chosen
        if program is None and options.get("autotune"):  # a program given runs as it is
            self.tuning, self.schedules = autotune(g, self._gpu_identity(), COMPILE_OPTIONS, self._time_candidates)
        if program is None:
            program = lower(g, {node: pick for node, (pick, _, _) in self.tuning.items()}) if self.tuning else plan.program
        super().__init__(plan, options, program)
        functions = self._compile(program.source(CUDA), [launch.kernel for launch in program.launches],
                                  f"the CUDA module of {plan.spec.name}")
        self.constants = {key: cp.asarray(value) for key, value in program.constants.items()}
        self.workspace = cp.empty(max(1, program.workspace_size), cp.float32)
        self.counters = cp.zeros(max(1, program.counters_size), cp.int32)  # each split-K kernel leaves them 0
        buffers = {"tensor": self.views, "const": self.constants, "workspace": {"": self.workspace},
                   "counters": {"": self.counters}}
        self.launches = self._calls(program.launches, functions, buffers)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.use_graph = options.get("cuda_graph", True)
        self.graph = None
        self.calls = 0

    def _compile(self, source: str, kernels: list[str], what: str) -> list:
        """The kernels of `source` (`what` it is, in words), compiled by NVRTC into one module (CuPy
        compiles on the first lookup). A failure is a bug in the generated code: an InternalError
        naming the kernels, with the log."""
        cp = self.cp
        try:
            module = cp.RawModule(code=source, options=COMPILE_OPTIONS)
            return [module.get_function(kernel) for kernel in kernels]
        except cp.cuda.compiler.CompileException as err:
            raise NvrtcError.from_log(source, str(err), what) from err

    def _calls(self, launches: list, functions: list, buffers: dict) -> list:
        """(function, grid, block, args, dynamic shared bytes) of each launch. A kernel that carves
        more than 48 KB of dynamic shared memory is allowed it first (the driver refuses the launch
        otherwise); more than this GPU gives a block is a DeviceError, not a failed launch."""
        cp, calls = self.cp, []
        limit = cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                                   self.gpu_id)
        for launch, fn in zip(launches, functions):
            shared = launch.shared_bytes
            if shared > limit:
                raise DeviceError(f"kernel {launch.kernel} needs {fmt_bytes(shared)} of shared memory per block; "
                                  f"this GPU allows {fmt_bytes(limit)}")
            if shared > 48 * 1024:
                fn.max_dynamic_shared_size_bytes = shared
            calls.append((fn, launch.grid, launch.block, tuple(buffers[kind][ref] for kind, ref in launch.args),
                          shared))
        return calls

    @property
    def device_name(self) -> str:
        return f"cuda:{self.gpu_id}"

    def _pinned(self):
        """Makes the model's GPU current for a block (a fresh context object per use: CuPy's keeps
        the device to restore in itself, so one shared object is not safe across threads)."""
        return self.cp.cuda.Device(self.gpu_id)

    def poison(self) -> None:
        with self._pinned(), self.stream:
            self.arena.fill(self.poison_value()[0])
            self.stream.synchronize()

    def _time_candidates(self, candidates: list, rounds: int = 5, repeats: int = 3
                         ) -> dict[str, tuple[int, float, float]]:
        """node -> (chosen pick, its ms, the default pick's ms), by `choose` from `rounds` timings of
        each candidate (each the mean of `repeats` runs), the rounds interleaved across candidates
        so a drift in clocks affects them alike."""
        cp = self.cp
        kernels = [l.kernel for c in candidates for l in c[2]]
        source = CUDA.render("\n".join(l.body for c in candidates for l in c[2]), storage=self.plan.precision)
        functions = dict(zip(kernels, self._compile(source, kernels, "the autotuning candidates")))
        workspace = cp.empty(max(1, max(l.workspace for c in candidates for l in c[2])), cp.float32)
        counters = cp.zeros(max(1, max(l.counters for c in candidates for l in c[2])), cp.int32)
        runs = []
        for node, pick, launches, constants in candidates:
            buffers = {"tensor": self.views, "workspace": {"": workspace}, "counters": {"": counters},
                       "const": {k: cp.asarray(v) for k, v in constants.items()}}
            calls = self._calls(launches, [functions[l.kernel] for l in launches], buffers)
            runs.append((node, pick, calls, buffers))
            _launch(calls)  # warm: loads the kernel
        samples: dict[str, dict[int, list[float]]] = {}
        start, end = cp.cuda.Event(), cp.cuda.Event()
        with progress_bar(rounds * len(runs), "autotuning", "timing") as bar:
            for _ in range(rounds):
                for node, pick, calls, _ in runs:
                    start.record()
                    for _ in range(repeats):
                        _launch(calls)
                    end.record()
                    end.synchronize()
                    samples.setdefault(node, {}).setdefault(pick, []).append(
                        cp.cuda.get_elapsed_time(start, end) / repeats)
                    bar.update(1)
        return {node: choose(by_pick) for node, by_pick in samples.items()}

    def _gpu_identity(self) -> str:
        cp = self.cp
        props = cp.cuda.runtime.getDeviceProperties(self.gpu_id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return (f"{name} sm_{props['major']}{props['minor']} driver {cp.cuda.runtime.driverGetVersion()} "
                f"cupy {cp.__version__}")

    def _upload(self, name, x):
        view = self.views[name]
        if isinstance(x, self.cp.ndarray):  # it may still be being written on the caller's stream
            self.stream.wait_event(self.cp.cuda.get_current_stream().record())
        with self.stream:
            if isinstance(x, self.cp.ndarray):
                view[...] = self.stored(x, self.cp, name).reshape(-1)
            else:
                view.set(self.stored(x, name=name).reshape(-1), stream=self.stream)

    def _launch_all(self):
        self.calls += 1
        with self.stream:
            if self.graph is not None:
                self.graph.launch(self.stream)
            elif self.use_graph and self.calls > 1:  # kernels are loaded and warm: capture once, replay after
                self.stream.begin_capture()
                try:
                    _launch(self.launches)
                finally:  # a launch that fails must not leave the stream capturing
                    graph = self.stream.end_capture()
                self.graph = graph
                self.graph.launch(self.stream)
            else:
                _launch(self.launches)

    def _launch_one(self, index: int) -> None:
        with self.stream:
            _launch(self.launches[index:index + 1])

    def time_launches(self, inputs):
        """Each launch between two CUDA events on the model's stream."""
        with self._pinned():
            return self._time_launches(inputs)

    def _time_launches(self, inputs):
        cp = self.cp
        for name, x in inputs.items():
            self._upload(name, x)
        marks = [cp.cuda.Event() for _ in range(len(self.launches) + 1)]
        with self.stream:
            marks[0].record(self.stream)
            for index in range(len(self.launches)):
                self._launch_one(index)
                marks[index + 1].record(self.stream)
        marks[-1].synchronize()
        return [((launch.kernel, launch.node), 1e-3 * cp.cuda.get_elapsed_time(marks[i], marks[i + 1]))
                for i, launch in enumerate(self.program.launches)]

    def _download(self, name):
        with self.stream:
            return self.loaded(self.views[name].reshape(self.arena_shape(name)), self.cp, name).copy()

    def run(self, inputs):
        with self._pinned():
            outputs = super().run(inputs)
            self.stream.synchronize()
        return outputs

    def run_observed(self, inputs):
        with self._pinned():
            return super().run_observed(inputs)

    def run_node_by_node(self, values):
        with self._pinned():
            return super().run_node_by_node(values)


def _launch(calls) -> None:
    for fn, grid, block, args, shared in calls:
        fn(grid, block, args, shared_mem=shared)
