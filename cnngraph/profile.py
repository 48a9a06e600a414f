"""`profile`: where a compiled model's time goes. Each kernel launch (each node on NumPy) is timed
on its device (CUDA events, OpenCL profiling events, a clock on NumPy), over several calls, and
reported with its share of the total, its achieved GFLOP/s and GB/s (the bytes of the tensors and
constants it reads and writes: a lower bound on its traffic), and the images/s of the whole."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from .model import CompiledModel

# Dense peaks of the GPUs whose figures are known (SXM parts): TFLOP/s per precision, memory TB/s.
# Matched by name in the CUDA device's name; elsewhere no fraction of peak is shown.
GPU_PEAKS = {
    "H200": {"fp32": 66.9, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "memory": 4.8},
    "H100": {"fp32": 66.9, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "memory": 3.35},
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0, "memory": 2.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0, "memory": 0.3},
    "A10": {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0, "bf16": 125.0, "memory": 0.6},
}


def gpu_peaks(card: str) -> dict | None:
    return next((peaks for name, peaks in GPU_PEAKS.items() if name in card), None)


def device_peaks(model: CompiledModel) -> tuple[float, float] | None:
    """(TFLOP/s at the model's precision, memory TB/s) of the model's GPU, or None when unknown."""
    if model.backend.device != "cuda":
        return None
    peaks = gpu_peaks(model.backend._gpu_identity())
    return (peaks[model.precision], peaks["memory"]) if peaks else None


@dataclass
class KernelTime:
    kernel: str           # the launch's kernel (the node's name on NumPy)
    node: str
    op: str
    ms: float             # median over the calls
    flops: int
    bytes: int

    @property
    def gflops(self) -> float:
        return self.flops / (self.ms * 1e6) if self.ms > 0 else 0.0

    @property
    def gbytes_per_s(self) -> float:
        return self.bytes / (self.ms * 1e6) if self.ms > 0 else 0.0


def profile(model: CompiledModel, inputs: dict[str, np.ndarray], repeats: int = 10) -> list[KernelTime]:
    """Per kernel (NumPy: per node), in execution order, the median of `repeats` timed calls after
    one warm-up call."""
    model.backend.run(inputs)  # warm: compiled, loaded, caches filled
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for key, seconds in model.backend.time_launches(inputs):
            samples.setdefault(key, []).append(seconds)
    g = model.graph
    program = model.backend.program if hasattr(model.backend, "program") else None
    sizes = _launch_costs(program) if program else _node_costs(g)
    return [KernelTime(kernel, node, g.nodes[node]["op"], 1e3 * statistics.median(times), *sizes[kernel])
            for (kernel, node), times in samples.items()]


def _launch_costs(program) -> dict[str, tuple[int, int]]:
    """kernel -> (FLOPs, bytes of its arguments)."""
    costs = {}
    for launch in program.launches:
        moved = 0
        for kind, ref in launch.args:
            if kind == "tensor":
                moved += 4 * program.tensors[ref][1]
            elif kind == "const":
                moved += program.constants[ref].nbytes
        costs[launch.kernel] = (launch.flops, moved)
    return costs


def _node_costs(g) -> dict[str, tuple[int, int]]:
    costs = {}
    for node in g.graph["order"]:
        a = g.nodes[node]
        weights = sum(w.nbytes for w in a.get("weights", {}).values())
        tensors = sum(4 * int(np.prod(g.nodes[i]["shape"])) for i in [*a["inputs"], node])
        costs[node] = (int(a.get("flops", 0)), weights + tensors)
    return costs


def profile_table(model: CompiledModel, times: list[KernelTime]) -> str:
    total = sum(t.ms for t in times)
    peaks = device_peaks(model)
    header = ("kernel", "op", "ms", "share", "GFLOP/s", "GB/s", *(("% peak FLOP/s", "% peak GB/s") if peaks else ()))
    rows = [(t.kernel, t.op, f"{t.ms:.4f}", f"{t.ms / total:.1%}" if total else "-", f"{t.gflops:.1f}",
             f"{t.gbytes_per_s:.1f}", *((f"{t.gflops / (10 * peaks[0]):.1f}", f"{t.gbytes_per_s / (10 * peaks[1]):.1f}")
                                       if peaks else ())) for t in sorted(times, key=lambda t: -t.ms)]
    widths = [min(60, max(len(r[i]) for r in [header, *rows])) for i in range(len(header))]

    def line(row):
        return "  ".join(c[:w].ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    flops = sum(t.flops for t in times)
    summary = (f"total {total:.3f} ms per call of batch {model.batch_size} ({model.batch_size / (total * 1e-3):.1f} "
               f"images/s, {flops / (total * 1e6):.1f} GFLOP/s) on {model.device}, precision {model.precision}"
               + ("; kernels timed one by one (the CUDA graph replays them with less overhead)"
                  if model.backend.device == "cuda" else "")) if total else "no kernels"
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows), "", summary])
