"""Compile CUDA kernels with NVRTC without a GPU (`cuda-bindings` + `nvidia-cuda-nvrtc`), and read
ptxas's report: registers, stack frame and spills per kernel. Used by tests and `cnngraph codegen`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import DeviceError


@dataclass
class KernelReport:
    name: str
    registers: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int


COMPILE_OPTIONS = ("-std=c++11", "-diag-suppress=177")  # 177: an epilogue may leave `idx` unused


class NvrtcError(Exception):
    """A kernel failed to compile; the message holds the NVRTC log."""


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
            raise NvrtcError(f"NVRTC failed for {name} ({arch}):\n{log}")
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
