"""The memory limit holds: every op's NumPy code stays within the memory the plan counts (weights,
arena and scratch, `model.memory`), measured with tracemalloc at sizes where a temporary copy of a
tensor would show; and the default limit respects `ulimit -v` (RLIMIT_AS) as it respects a
container's cgroup limit."""

from __future__ import annotations

import math
import resource
import tracemalloc

import numpy as np
import pytest

import cnngraph
from cnngraph.ops import OPS
from cnngraph.resources import ram_limit
from test_registry import CASES, inputs_of, spec_of

TENSOR_BYTES = 4 * 2**20  # the largest input of each example, scaled up by the batch size
SLACK = 256 * 2**10       # Python objects and NumPy's ufunc buffers: far below one tensor


@pytest.mark.parametrize("op, index", CASES)
def test_op_stays_within_the_memory_its_plan_counts(op, index):
    spec = spec_of(op, index)
    batch = max(1, TENSOR_BYTES // (4 * max(math.prod(s) for s in OPS[op].examples[index].inputs)))
    planned = cnngraph.compile(spec, batch_size=batch, device="cpu").memory
    model = cnngraph.compile(spec, batch_size=batch, device="cpu", max_memory=planned.total)  # exactly enough
    xs = inputs_of(spec, batch, seed=index)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        y = model(xs if len(xs) > 1 else next(iter(xs.values())))
        used = tracemalloc.get_traced_memory()[1] - before - y.nbytes  # the result returned is the caller's
    finally:
        tracemalloc.stop()
    assert used <= model.memory.scratch + SLACK, (
        f"{op} used {used:,} bytes beyond its arena and output, its plan counts {model.memory.scratch:,} of scratch")


def address_space_limit(monkeypatch, soft: int) -> None:
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_AS else real(which))


def test_default_limit_respects_ulimit_v(monkeypatch):
    address_space_limit(monkeypatch, soft=2**40)  # above the machine's RAM: RAM (or cgroup) is the limit
    roomy, roomy_source = ram_limit()
    assert "ulimit" not in roomy_source
    address_space_limit(monkeypatch, soft=2**31)  # 2 GiB of address space, part of it mapped already
    size, source = ram_limit()
    assert size < 0.8 * 2**31 and size < roomy and "ulimit -v" in source
    wide = {"format_version": 1, "name": "wide", "inputs": [{"name": "x", "shape": [8192]}],
            "layers": [{"op": "linear", "name": "fc", "out_features": 65536}]}  # a 2 GiB weight
    with pytest.raises(cnngraph.ResourceError, match="ulimit -v"):  # refused before anything is allocated,
        cnngraph.compile(wide, device="cpu")                         # not a MemoryError


def test_an_address_space_already_used_up_leaves_no_room(monkeypatch):
    address_space_limit(monkeypatch, soft=2**20)  # less than the interpreter has mapped
    assert ram_limit()[0] == 0
    tiny = {"format_version": 1, "name": "tiny", "inputs": [{"name": "x", "shape": [4]}],
            "layers": [{"op": "relu", "name": "r"}]}
    with pytest.raises(cnngraph.ResourceError):
        cnngraph.compile(tiny, device="cpu")
    np.testing.assert_array_equal(cnngraph.compile(tiny, device="cpu", max_memory="1MiB")(np.ones((1, 4), np.float32)),
                                  np.ones((1, 4), np.float32))  # an explicit max_memory is the user's to choose
