"""Compile time grows linearly (up to log factors) with the number of layers, weights and inputs of
a node: a quadratic step would make a 16k-layer network take minutes (it took 94 s). Each test
compares two sizes 4x apart in one run, so the machine's speed cancels out: linear work takes
about 4x as long, quadratic work 16x; the bound of 6 leaves room for noise and log factors."""

from __future__ import annotations

import gc
import time

import cnngraph
from cnngraph.passes import plan_memory
from test_passes import check_memory_plan

MAX_RATIO = 6


def chain(n: int) -> dict:
    """n linear layers in a row: n nodes, 2n weights."""
    return {"format_version": 1, "name": "chain", "inputs": [{"name": "x", "shape": [4]}],
            "layers": [{"op": "linear", "name": f"fc{i}", "out_features": 4} for i in range(n)]}


def wide(n: int, op: str = "add") -> dict:
    """n branches of one input joined by one add (or concat) of n inputs: n tensors live at once."""
    branches = [{"op": "relu", "name": f"r{i}", "inputs": ["x"]} for i in range(n)]
    return {"format_version": 1, "name": "wide", "inputs": [{"name": "x", "shape": [4, 2, 2]}],
            "layers": [*branches, {"op": op, "name": "join", "inputs": [b["name"] for b in branches]}]}


def compile_seconds(spec: dict, repeats: int = 1) -> float:
    """The fastest of `repeats` compiles on the CPU, each from a collected heap."""
    spec = cnngraph.parse_spec(spec)
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        cnngraph.compile(spec, device="cpu")
        best = min(best, time.perf_counter() - start)
    return best


def test_a_long_chain_compiles_in_linear_time():
    small = compile_seconds(chain(4000), repeats=2)  # the fastest of two: a busy machine slows one run, not both
    large = compile_seconds(chain(16000), repeats=2)
    assert large / small < MAX_RATIO, f"4k layers: {small:.2f} s, 16k layers: {large:.2f} s"


def test_a_wide_add_compiles_in_linear_time():
    # the memory planner once compared every tensor with every other: 20 s for an add of 5,000 inputs
    small = compile_seconds(wide(1000), repeats=2)
    large = compile_seconds(wide(4000), repeats=2)
    # one node of arity n makes the sorts and heaps log factors heavier, and the garbage collector
    # busier, than a chain does: 4.7-5.5x measured, so a looser bound, still half of quadratic's 16x
    assert large / small < 8, f"1k inputs: {small:.2f} s, 4k inputs: {large:.2f} s"


def test_many_tensors_live_at_once_are_still_planned_disjoint_and_tight():
    # past BEST_FIT_RIVALS rivals a tensor is stacked on top of them rather than fitted into a gap
    n = 3 * plan_memory.BEST_FIT_RIVALS
    for op in ("add", "concat"):
        g = cnngraph.compile(wide(n, op), device="cpu").graph
        arena, peak = check_memory_plan(g)
        assert arena == peak  # all n branches are live at the join: nothing better exists
