"""Static profile of the conv kernels' main loops, from their SASS (NVRTC + nvdisasm, no GPU).

    python bench/sass_loops.py [--cases resnet18:64,mobilenet_v2:64] [--precisions fp32,tf32,fp16] [--arch sm_90]

For each conv (and linear) GEMM kernel of each example at each precision (not the depthwise
convs, which run on the FP32 cores at every precision): the instructions of its main
loop (`nvrtc.main_loop`) per unit of work, and what they are. The work unit is 1024 fused
multiply-adds: one m16n8k8 TF32 product (HMMA.1688), half an m16n8k16 16-bit one (HMMA.16816), 32
warp-wide FFMAs. A GPU issues one instruction per clock per SM sub-partition, four per SM, and an
H100/H200 SM completes per clock about one unit at TF32, two at FP16/BF16, an eighth on the FP32
cores (an A100 half as many on the tensor cores): a TF32 loop of more than 4 instructions per
unit cannot keep the tensor cores busy, whatever else it waits on. So this measures, without a
GPU, a cost that decides whether a kernel can reach its precision's peak: `bound` is the largest
fraction of the H100/H200 peak its issue rate allows.
Prints a table per case and writes bench/results/sass-loops-<date>.json.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cnngraph  # noqa: E402
from cnngraph.codegen.dialects import CUDA  # noqa: E402
from cnngraph.codegen.nvrtc import disassemble, main_loop  # noqa: E402
from results_file import run_record, save  # noqa: E402

FMA_PER = {"HMMA.1688": 1024, "HMMA.16816": 2048, "FFMA": 32}  # per warp-wide instruction
UNIT = 1024  # multiply-adds: one m16n8k8 TF32 product
ISSUE_PER_CLOCK = 4  # instructions an SM issues per clock
UNITS_PER_CLOCK = {"fp32": 1 / 8, "tf32": 1, "fp16": 2, "bf16": 2}  # an H100/H200 SM's peak
KINDS = {"shared loads": ("LDS", "LDSM"), "shared stores": ("STS",), "async copies": ("LDGSTS",),
         "global loads": ("LDG",), "barriers": ("BAR",)}


def profile(code, precision: str) -> dict | None:
    """A kernel's main loop: instructions, products and the instructions per 1024 multiply-adds."""
    loop = main_loop(code)
    counts = collections.Counter(i.opcode for i in loop)
    fma = sum(n * per for op, n in counts.items() for prefix, per in FMA_PER.items() if op.startswith(prefix))
    if not fma:
        return None
    per_unit = len(loop) * UNIT / fma
    return {"instructions": len(loop), "multiply_adds": fma, "per_unit": round(per_unit, 2),
            "issue_bound": round(min(1.0, ISSUE_PER_CLOCK / (per_unit * UNITS_PER_CLOCK[precision])), 3),
            **{kind: sum(n for op, n in counts.items() if op.split(".")[0] in ops) for kind, ops in KINDS.items()},
            "opcodes": dict(counts.most_common())}


def measure(example: str, batch: int, precision: str, arch: str) -> list[dict]:
    plan = cnngraph.plan(ROOT / "examples" / f"{example}.json", batch, precision=precision)
    code = disassemble(plan.program.source(CUDA), arch)
    rows = []
    for launch in plan.program.launches:
        gemm = plan.graph.nodes[launch.node]["op"].split("+")[0] in ("conv2d", "linear") and "_dw_" not in launch.kernel
        if gemm and launch.kernel in code and (loop := profile(code[launch.kernel], precision)):
            rows.append({"kernel": launch.kernel, "tile": str(launch.schedule.tile) if launch.schedule else "", **loop})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="resnet18:64,mobilenet_v2:64", help="example:batch, comma-separated")
    p.add_argument("--precisions", default="fp32,tf32,fp16")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    results = []
    for case in args.cases.split(","):
        example, batch = case.split(":")
        for precision in args.precisions.split(","):
            rows = measure(example, int(batch), precision, args.arch)
            results.append({"network": example, "batch": int(batch), "precision": precision,  # opcode counts
                            "kernels": [{k: v for k, v in r.items() if k != "opcodes"} for r in rows]})  # summed up
            print(f"\n{example} batch {batch} {precision} ({args.arch}): main loops, instructions per 1024 "
                  "multiply-adds (issue bound: of the H100/H200 peak)")
            print(f"{'kernel':52} {'instr':>6} {'per 1k':>7} {'bound':>6} {'LDS':>4} {'STS':>4} {'cp.as':>5}")
            for r in rows:
                print(f"{r['kernel'][:52]:52} {r['instructions']:6} {r['per_unit']:7.2f} {r['issue_bound']:6.0%} "
                      f"{r['shared loads']:4} {r['shared stores']:4} {r['async copies']:5}")
    if not args.no_save:
        save(run_record(arch=args.arch, command=" ".join(sys.argv), results=results), "sass-loops")


if __name__ == "__main__":
    main()
