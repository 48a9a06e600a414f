"""Compile-time benchmark: seconds to validate and to compile (NumPy backend) against the layer count.

    python bench/compile_time.py [--layers 1000,4000,16000,64000] [--shapes chain,wide_add]

Two network shapes: `chain`, n linear layers one after another (every step of the compiler sees n
nodes and n weights), and `wide_add`, n relu layers of one input summed by a single `add` of n
inputs (n tensors live at once: the memory planner's hardest case, and one node of arity n).
Prints a table (time per layer should stay flat as n grows: the compiler is linear, up to log
factors) and writes bench/results/compile-time-<date>.json.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cnngraph  # noqa: E402
from results_file import run_record, save  # noqa: E402


def chain(n: int) -> dict:
    return {"format_version": 1, "name": f"chain{n}", "inputs": [{"name": "x", "shape": [4]}],
            "layers": [{"op": "linear", "name": f"fc{i}", "out_features": 4} for i in range(n)]}


def wide_add(n: int) -> dict:
    branches = [{"op": "relu", "name": f"r{i}", "inputs": ["x"]} for i in range(n)]
    return {"format_version": 1, "name": f"wide_add{n}", "inputs": [{"name": "x", "shape": [4, 2, 2]}],
            "layers": [*branches, {"op": "add", "name": "sum", "inputs": [b["name"] for b in branches]}]}


SHAPES = {"chain": chain, "wide_add": wide_add}


def seconds(call) -> float:
    gc.collect()  # each measurement starts from the same heap, not the previous one's garbage
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(shape: str, n: int) -> dict:
    spec = cnngraph.parse_spec(SHAPES[shape](n))
    validate = seconds(lambda: cnngraph.build(spec))
    compile_ = seconds(lambda: cnngraph.compile(spec, device="cpu"))
    return {"shape": shape, "layers": len(spec.layers), "validate_s": validate, "compile_s": compile_,
            "compile_us_per_layer": 1e6 * compile_ / len(spec.layers)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="1000,4000,16000,64000", help="layer counts, comma-separated")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"network shapes: {', '.join(SHAPES)}")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    results = []
    print(f"{'shape':9s} {'layers':>7s} {'validate s':>11s} {'compile s':>10s} {'us/layer':>9s}")
    for shape in args.shapes.split(","):
        for n in (int(x) for x in args.layers.split(",")):
            r = measure(shape, n)
            results.append(r)
            print(f"{shape:9s} {r['layers']:7d} {r['validate_s']:11.2f} {r['compile_s']:10.2f} "
                  f"{r['compile_us_per_layer']:9.0f}", flush=True)
    record = run_record(python=platform.python_version(), results=results)
    if not args.no_save:
        save(record, "compile-time")


if __name__ == "__main__":
    main()
