"""The OpenCL backend (PyOpenCL): runs the OpenCL rendering of the Program. Without a GPU it runs
on PoCL (OpenCL on the CPU), which is how the generated kernels are tested in CI.

Option `race_check` (or the environment variable CNNGRAPH_RACE_CHECK=1) runs the race-check
rendering instead (`OPENCL_RACE_CHECK` in codegen/dialects.py): a missing barrier between shared
memory accesses of different threads turns values into NaN, and `run` raises a DeviceError that
names the kernels and counts the conflicting accesses. Run it with POCL_MAX_PTHREAD_COUNT=1 for
the 16-bit kernels: with PoCL running work-groups on several threads, their check now and then
counts conflicts that a single thread never shows (the plain rendering is unaffected)."""

from __future__ import annotations

import os

import numpy as np

from ..codegen.dialects import OPENCL, OPENCL_RACE_CHECK, RACE_LOG_INTS, bank_conflicts, race_checked
from ..codegen.lower import Program
from ..errors import DeviceError
from ..kernel_cache import cache_key, entry_path, read_entry, write_entry
from ..resources import ram_limit
from .program_backend import ProgramBackend


def _opencl():
    try:
        import pyopencl as cl
    except ImportError as err:
        raise DeviceError(f"device \"opencl\" needs pyopencl (pip install pyopencl pocl-binary-distribution): {err}")
    return cl


class OpenCLBackend(ProgramBackend):
    device = "opencl"
    weight_copies = 2  # the weights given and the constant buffers made from them

    @classmethod
    def memory_limit(cls) -> tuple[int | None, str]:
        return ram_limit()

    @classmethod
    def scratch_bytes(cls, plan) -> int:
        return 4 * (plan.program.workspace_size + plan.program.counters_size)

    def __init__(self, plan, options: dict | None = None, program: Program | None = None):
        options = options or {}
        super().__init__(plan, options, program)
        program = self.program
        cl = self.cl = _opencl()
        try:
            self.context = cl.create_some_context(interactive=False)
        except cl.Error as err:
            raise DeviceError(f"no OpenCL device: {err}") from None
        self.queue = cl.CommandQueue(self.context)
        race_check = options.get("race_check", os.environ.get("CNNGRAPH_RACE_CHECK", "0") not in ("", "0"))
        self.compiled = self._build(program.source(OPENCL_RACE_CHECK if race_check else OPENCL))
        mf = cl.mem_flags
        eb = self.element_bytes
        self.arena = cl.Buffer(self.context, mf.READ_WRITE, size=max(4, program.arena_size * eb))
        self.views = {name: self.arena.get_sub_region(offset * eb, max(4, size * eb))
                      for name, (offset, size, _) in program.tensors.items()}
        self.constants = consts = {  # kept alive here: kernels do not hold references to their buffers
            key: cl.Buffer(self.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=value)
                  for key, value in program.constants.items()}
        self.workspace = cl.Buffer(self.context, mf.READ_WRITE, size=max(4, program.workspace_size * 4))
        self.counters = cl.Buffer(self.context, mf.READ_WRITE | mf.COPY_HOST_PTR,  # each split-K kernel leaves them 0
                                  hostbuf=np.zeros(max(1, program.counters_size), np.int32))
        buffers = {"tensor": self.views, "const": consts, "workspace": {"": self.workspace},
                   "counters": {"": self.counters}}
        self.kernels = []
        self.race_counters = {}  # launch index -> its kernel's count of conflicting accesses (race check)
        self.race_logs = {}  # launch index -> its first work-group's log of shared-memory accesses (bank check)
        for index, launch in enumerate(program.launches):
            kernel = cl.Kernel(self.compiled, launch.kernel)
            args = [buffers[kind][ref] for kind, ref in launch.args]
            if race_check and race_checked(launch.body):
                self.race_counters[index] = cl.Buffer(self.context, mf.READ_WRITE | mf.COPY_HOST_PTR,
                                                      hostbuf=np.zeros(1, np.int32))
                threads = int(np.prod(launch.block))
                self.race_logs[index] = cl.Buffer(self.context, mf.READ_WRITE | mf.COPY_HOST_PTR,
                                                  hostbuf=np.full(threads * RACE_LOG_INTS, -1, np.int32))
                args += [self.race_counters[index], self.race_logs[index]]
            kernel.set_args(*args)
            global_size = tuple(g * b for g, b in zip(launch.grid, launch.block))
            self.kernels.append((kernel, global_size, launch.block))

    def _build(self, source: str):
        """The program from the kernel cache when this device built the same source before (a
        binary loads in milliseconds, a build takes seconds), else built and cached."""
        cl, options = self.cl, ["-cl-std=CL1.2"]
        devices = self.context.devices
        identity = [f"{d.platform.name} {d.platform.version} {d.name} {d.version} {d.driver_version}" for d in devices]
        path = entry_path("opencl", cache_key(source, *options, *identity)) if len(devices) == 1 else None
        binary = read_entry(path) if path else None
        if binary is not None:
            try:
                return cl.Program(self.context, devices, [binary]).build(options=options, cache_dir=False)
            except cl.Error:
                pass  # a binary this driver no longer loads: build from source and replace it
        built = cl.Program(self.context, source).build(options=options, cache_dir=False)
        binary = built.get_info(cl.program_info.BINARIES)[0]
        if path and binary:  # a driver may give no binary: nothing to cache
            write_entry(path, binary)
        return built

    def poison(self) -> None:
        """Fill the arena with NaN, so an element no kernel writes shows up in the results."""
        nan = np.resize(self.poison_value(), self.program.arena_size)
        self.cl.enqueue_copy(self.queue, self.arena, nan)

    def run(self, inputs):
        for counter in self.race_counters.values():
            self.cl.enqueue_copy(self.queue, counter, np.zeros(1, np.int32))
        outputs = super().run(inputs)
        if races := self.races():
            raise DeviceError("race check: shared memory accessed by several threads with no barrier between "
                              "(conflicting accesses per kernel): "
                              + ", ".join(f"{kernel} {count}" for kernel, count in races.items()))
        return outputs

    def races(self) -> dict[str, int]:
        """Race check: the conflicting shared-memory accesses each kernel counted (since `run` last
        began), for the kernels that counted any."""
        found = {}
        for index, counter in self.race_counters.items():
            count = np.zeros(1, np.int32)
            self.cl.enqueue_copy(self.queue, count, counter)
            if count[0]:
                found[self.program.launches[index].kernel] = int(count[0])
        return found

    def bank_conflicts(self) -> dict[str, dict[tuple[str, bool], int]]:
        """Bank check (the race-check rendering, after a run): per kernel, (statement, write) ->
        the most passes one warp-wide shared-memory access by that statement of the kernel's
        source needed in its first work-group (1: free of bank conflicts; `dialects.bank_conflicts`)."""
        lines = self.program.body().splitlines()
        found: dict[str, dict[tuple[str, bool], int]] = {}
        for index, buffer in self.race_logs.items():
            launch = self.program.launches[index]
            threads = int(np.prod(launch.block))
            log = np.empty(threads * RACE_LOG_INTS, np.int32)
            self.cl.enqueue_copy(self.queue, log, buffer)
            sites = found.setdefault(launch.kernel, {})
            for (line, write), ways in bank_conflicts(log, threads).items():
                site = (_statement(lines, line), write)
                sites[site] = max(sites.get(site, 1), ways)
        return found

    def _upload(self, name, x):
        self.cl.enqueue_copy(self.queue, self.views[name], self.stored(x, name=name))

    def _launch_all(self):
        for index in range(len(self.kernels)):
            self._launch_one(index)

    def _launch_one(self, index: int, queue=None):
        kernel, global_size, local_size = self.kernels[index]
        return self.cl.enqueue_nd_range_kernel(queue or self.queue, kernel, global_size, local_size)

    def time_launches(self, inputs):
        """Each kernel on a profiling queue: the device's own start and end of each launch."""
        cl = self.cl
        if not hasattr(self, "profiling_queue"):
            self.profiling_queue = cl.CommandQueue(self.context, properties=cl.command_queue_properties.PROFILING_ENABLE)
        for name, x in inputs.items():
            self._upload(name, x)
        self.queue.finish()
        events = [self._launch_one(i, self.profiling_queue) for i in range(len(self.kernels))]
        self.profiling_queue.finish()
        return [((launch.kernel, launch.node), (event.profile.end - event.profile.start) * 1e-9)
                for launch, event in zip(self.program.launches, events)]

    def _download(self, name):
        out = np.empty(self.arena_shape(name), np.uint16 if self.half else np.float32)
        self.cl.enqueue_copy(self.queue, out, self.views[name])
        return self.loaded(out, name=name)


def _statement(lines: list[str], last: int) -> str:
    """The source statement that ends on line `last` (1-based; where `__LINE__` puts a call that
    spans lines), on one line."""
    first = last
    while first > 1 and not lines[first - 2].rstrip().endswith((";", "{", "}", "*/")):
        first -= 1
    return " ".join(line.strip() for line in lines[first - 1:last])
