"""Compile CUDA kernels with NVRTC without a GPU (`cuda-bindings` + `nvidia-cuda-nvrtc`), and read
ptxas's report: registers, stack frame and spills per kernel. Used by tests and `cnngraph codegen`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeviceError, InternalError


@dataclass
class KernelReport:
    name: str
    registers: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int = 0  # static shared memory per block


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


def compile_cuda(source: str, arch: str = "sm_90", name: str = "kernel.cu", cubin: list | None = None
                 ) -> dict[str, KernelReport]:
    """Compile `source` for `arch`; returns ptxas's report per kernel, or raises NvrtcError with the log.
    With a `cubin` list, the compiled cubin's bytes are appended to it (for `sass`)."""
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
        if cubin is not None:
            _, size = nvrtc.nvrtcGetCUBINSize(prog)
            binary = b" " * size
            nvrtc.nvrtcGetCUBIN(prog, binary)
            cubin.append(binary)
        return parse_ptxas_log(log)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str               # "HMMA.1688.F32.TF32", "LDS", ... (without its predicate)
    target: int | None = None  # a branch's destination


def sass(source: str, arch: str = "sm_90") -> dict[str, list[str]]:
    """The SASS opcodes of each kernel of `source` compiled for `arch` (nvdisasm reads the cubin; no
    GPU needed): kernel -> opcodes in program order ("HMMA.1688.F32.TF32", "LDS", ...)."""
    return {kernel: [i.opcode for i in code] for kernel, code in disassemble(source, arch).items()}


def main_loop(code: list[Instruction]) -> list[Instruction]:
    """The instructions of a kernel's main loop: of the loops (a branch back to an earlier address
    and what lies between), the one holding the most tensor-core products (HMMA; else FFMA), the
    innermost of those; the whole kernel where no loop holds a product (a reduction the compiler
    knows to be one slice long)."""
    def products(body: list[Instruction]) -> tuple[int, int]:
        return (sum(i.opcode.startswith("HMMA") for i in body), sum(i.opcode.startswith("FFMA") for i in body))

    loops = [[i for i in code if branch.target <= i.address <= branch.address]
             for branch in code if branch.target is not None and branch.target <= branch.address]
    return max([body for body in loops if any(products(body))], key=lambda body: (products(body), -len(body)),
               default=code)


def disassemble(source: str, arch: str = "sm_90") -> dict[str, list[Instruction]]:
    """Each kernel of `source` compiled for `arch`, as SASS instructions in program order (nvdisasm
    reads the cubin; no GPU needed)."""
    import shutil
    import subprocess
    import sysconfig
    import tempfile

    tool = shutil.which("nvdisasm") or next(
        (str(p) for p in Path(sysconfig.get_paths()["purelib"]).glob("nvidia/*/bin/nvdisasm")), None)
    if tool is None:
        raise DeviceError("nvdisasm is not available (pip install nvidia-cuda-nvdisasm)")
    binary: list = []
    compile_cuda(source, arch, cubin=binary)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(binary[0])
        f.flush()
        listing = subprocess.run([tool, "-c", f.name], capture_output=True, text=True, check=True).stdout
    kernels: dict[str, list[tuple[int, str, str | None]]] = {}
    labels: dict[str, int] = {}  # a branch's label -> the address of the instruction after it
    current, pending = None, []
    for line in listing.splitlines():
        if m := re.match(r"\s*\.text\.(\w+):", line):
            current = kernels.setdefault(m.group(1), [])
        elif m := re.match(r"\s*(\.L_x_\d+):", line):
            pending.append(m.group(1))
        elif current is not None and (m := re.search(
                r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*)", line)):
            address = int(m.group(1), 16)
            labels.update((label, address) for label in pending)
            pending = []
            branch = re.search(r"`\((\.L_x_\d+)\)", m.group(3)) if m.group(2).startswith("BRA") else None
            current.append((address, m.group(2), branch and branch.group(1)))
    return {kernel: [Instruction(address, opcode, labels.get(label)) for address, opcode, label in code]
            for kernel, code in kernels.items()}


def parse_ptxas_log(log: str) -> dict[str, KernelReport]:
    reports, current, frame = {}, None, None
    for line in log.splitlines():
        if m := re.search(r"Function properties for (\S+)", line):
            current = m.group(1)
        elif current and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            frame = tuple(map(int, m.groups()))
        elif current and frame and (m := re.search(r"Used (\d+) registers", line)):
            smem = re.search(r"(\d+) bytes smem", line)
            reports[current] = KernelReport(current, int(m.group(1)), *frame, int(smem.group(1)) if smem else 0)
            current = frame = None
    return reports


def _check(nvrtc, err, what: str) -> None:
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcError(f"{what} failed: {err}")
