"""Compile CUDA kernels with NVRTC without a GPU (`cuda-bindings` + `nvidia-cuda-nvrtc`), and read
ptxas's report: registers, stack frame and spills per kernel. Used by tests and `cnngraph codegen`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import DeviceError, InternalError


@dataclass
class KernelReport:
    name: str
    registers: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int


COMPILE_OPTIONS = ("-std=c++11", "-diag-suppress=177")  # 177: an epilogue may leave `idx` unused


class NvrtcError(InternalError):
    """Generated code failed to compile: a bug in cnngraph. The message names the kernels the log
    blames and holds the log."""

    @classmethod
    def from_log(cls, source: str, log: str, what: str) -> "NvrtcError":
        blamed = failing_kernels(source, log)
        kernels = f"kernel {', '.join(blamed)} of " if blamed else ""
        return cls(f"NVRTC failed to compile {kernels}{what} (a bug in cnngraph's code generation, please "
                   f"report it):\n{log}")


def failing_kernels(source: str, log: str) -> list[str]:
    """The kernels of `source` that the compiler's `log` blames: those it names, and those holding
    the lines it reports errors on ("k.cu(120): error ...")."""
    starts = [(source.count("\n", 0, m.start()) + 1, m.group(1))
              for m in re.finditer(r"\bvoid\s+(\w+)\s*\(", source)]  # (line, kernel), in order
    blamed = {name for _, name in starts if re.search(rf"\b{name}\b", log)}
    for line in (int(n) for n in re.findall(r"\((\d+)\): (?:error|Error)", log)):
        before = [name for start, name in starts if start <= line]
        if before:
            blamed.add(before[-1])
    return [name for _, name in starts if name in blamed]


def compile_cuda(source: str, arch: str = "sm_90", name: str = "kernel.cu") -> dict[str, KernelReport]:
    """Compile `source` for `arch`; returns ptxas's report per kernel, or raises NvrtcError with the log."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as err:
        raise DeviceError(f"NVRTC is not available (pip install cuda-bindings nvidia-cuda-nvrtc): {err}") from None
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    _check(nvrtc, err, "nvrtcCreateProgram")
    try:
        options = [f"-arch={arch}".encode(), b"-Xptxas=-v", *(o.encode() for o in COMPILE_OPTIONS)]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log.decode(errors="replace").rstrip("\x00 \n")
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise NvrtcError.from_log(source, log, f"{name} ({arch})")
        return parse_ptxas_log(log)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def parse_ptxas_log(log: str) -> dict[str, KernelReport]:
    reports, current, frame = {}, None, None
    for line in log.splitlines():
        if m := re.search(r"Function properties for (\S+)", line):
            current = m.group(1)
        elif current and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            frame = tuple(map(int, m.groups()))
        elif current and frame and (m := re.search(r"Used (\d+) registers", line)):
            reports[current] = KernelReport(current, int(m.group(1)), *frame)
            current = frame = None
    return reports


def _check(nvrtc, err, what: str) -> None:
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcError(f"{what} failed: {err}")
