"""Every activation at the tails, on every backend, against PyTorch in float64: infinities, NaN,
huge and denormal values, and the ranges where a formula saturates (relu6 above 6, hardswish and
hardsigmoid beyond +-3, sigmoid, silu and both GELUs far out), from one table of cases.

A formula can be right in the middle and wrong at the ends: GELU's 0.5 x (1 + tanh u) multiplies
the error of a tanh that does not quite reach -1 by x (PoCL: -6e-7 at x = -20, -2.98e22 at
x = -1e30, -inf at -inf where PyTorch gives -0, -0 and NaN).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnngraph
from cnngraph.ops import ACTIVATIONS
from test_backends import BACKENDS

# the points every activation is tried at; its own tails are added below
EVERYWHERE = [-np.inf, -1e30, -100.0, -20.0, -1e-40, 0.0, 1e-40, 20.0, 100.0, 1e30, np.inf, np.nan]
TAILS = {  # op -> where its formula changes regime or saturates
    "relu6": [5.999, 6.0, 6.001, 7.0, 1e6],
    "hardswish": [-1e6, -4.0, -3.0, -2.999, 2.999, 3.0, 4.0, 1e6],
    "hardsigmoid": [-1e6, -4.0, -3.0, -2.999, 2.999, 3.0, 4.0, 1e6],
    "sigmoid": [-88.0, -30.0, -17.0, 17.0, 30.0, 88.0, 89.0],
    "silu": [-88.0, -30.0, -17.0, 17.0, 30.0, 88.0, 89.0],
    "gelu": [-40.0, -10.0, -6.0, -5.0, 5.0, 6.0, 10.0, 40.0],
    "tanh": [-10.0, -9.0, 9.0, 10.0],
}

# float32 results against the float64 reference: relative 1e-5, and 1e-7 absolute, the error of
# a float32 near 1 (a result of 1e-9 computed as 0 passes; the -6e-7 of GELU at -20 does not)
RTOL, ATOL = 1e-5, 1e-7

CASES = [(op, params) for op, model in ACTIVATIONS.items() for params in model.variants]


def points(op: str) -> np.ndarray:
    return np.array(EVERYWHERE + TAILS.get(op, []), np.float32)


def tails_network() -> dict:
    """Every activation and parameter set of the table as a layer of its own, all reading the input
    (one input per op, so each sees its own tails); one output each."""
    ops = sorted({op for op, _ in CASES})
    inputs = [{"name": f"x_{op}", "shape": [len(points(op))]} for op in ops]
    layers = [{"op": op, "name": f"{op}_{i}", "inputs": [f"x_{op}"], **params}
              for i, (op, params) in enumerate(CASES)]
    return {"format_version": 1, "name": "tails", "inputs": inputs, "layers": layers,
            "outputs": [layer["name"] for layer in layers]}


def reference(op: str, params: dict) -> np.ndarray:
    act = cnngraph.ops.make_activation({"op": op, **params})
    return act.torch(torch.from_numpy(points(op).astype(np.float64)[None])).numpy()[0]


def mismatches(op: str, got: np.ndarray, want: np.ndarray) -> list[str]:
    x = points(op)
    bad = ~(np.isclose(got, want, rtol=RTOL, atol=ATOL) | (np.isnan(got) & np.isnan(want)))
    return [f"x={x[i]:g}: got {got[i]:g}, PyTorch {want[i]:g}" for i in np.flatnonzero(bad)]


@pytest.fixture(scope="module")
def inputs():
    return {f"x_{op}": points(op)[None] for op in {op for op, _ in CASES}}


@pytest.mark.parametrize("device", ["cpu", *BACKENDS])
def test_every_activation_at_its_tails(device, inputs):
    model = cnngraph.compile(tails_network(), device=device, optimize=False)
    with np.errstate(all="ignore"):
        outputs = model(inputs)
    failures = []
    for i, (op, params) in enumerate(CASES):
        failures += [f"{op} {params}: {m}" for m in mismatches(op, outputs[f"{op}_{i}"][0], reference(op, params))]
    assert not failures, f"{len(failures)} mismatches on {device}:\n" + "\n".join(failures)


def test_the_table_covers_every_activation():
    assert {op for op, _ in CASES} == set(ACTIVATIONS)
    assert ("gelu", {"approximate": "tanh"}) in CASES
