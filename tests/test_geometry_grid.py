"""A geometry grid for the window kernels: convolutions (plain, grouped, depthwise, and a conv whose
pool fuses into its store), pools and upsampling, with different values in H and W for every
kernel, stride, dilation and padding, odd image sizes that divide no tile, ceil_mode and
count_include_pad both ways. Square cases let a kernel that swaps H and W (the vertical stride for
the horizontal one, say) pass; these do not.

Every case is a layer of its own reading its own input, all in one network per family, so one
OpenCL build covers a family. Each output is compared with float64 PyTorch (NumPy backend), and
the OpenCL (PoCL, arena poisoned) and CUDA outputs with the NumPy backend's."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

import cnngraph
from test_backends import BACKENDS, rel_err
from torch_oracle import run_spec


def _sample(options: list, count: int, seed: int) -> list:
    """`count` of the combinations, the same on every run."""
    return random.Random(seed).sample(options, min(count, len(options)))


CONVS = [dict(kernel_size=list(k), stride=list(s), dilation=list(d), padding=list(p))
         for k, s, d, p in _sample(list(itertools.product([(1, 3), (3, 1), (2, 5), (3, 3)], [(1, 2), (2, 1), (3, 2)],
                                                          [(1, 1), (1, 2), (2, 1)], [(0, 1), (2, 0), (1, 1)])),
                                   14, seed=1)]
GROUPINGS = [(8, 1), (8, 4), (8, "depthwise")]  # (channels, groups)
POOLS = [dict(op=op, kernel_size=list(k), stride=list(s), padding=list(p), ceil_mode=c,
              **({"count_include_pad": i} if op == "avg_pool2d" else {}))
         for op, k, s, p, c, i in _sample(list(itertools.product(
             ["max_pool2d", "avg_pool2d"], [(2, 3), (3, 2), (3, 3)], [(1, 2), (2, 3), (2, 1)], [(0, 1), (1, 0)],
             [False, True], [False, True])), 16, seed=2)]
UPSAMPLES = [{"scale_factor": [2, 3]}, {"scale_factor": [3, 1], "mode": "bilinear"},
             {"size": [17, 8], "mode": "bilinear", "align_corners": True}, {"size": [5, 19]},
             {"size": [13, 26], "mode": "bilinear"}]


def family(layers: list[dict], shape=(8, 11, 13)) -> dict:
    """One network: layer i reads input x_i; every layer is an output."""
    return {"format_version": 1, "name": "grid", "layers": layers,
            "inputs": [{"name": f"x_{i}", "shape": list(shape)} for i in range(len(layers))],
            "outputs": [layer["name"] for layer in layers]}


def conv_family() -> dict:
    layers = []
    for i, geometry in enumerate(CONVS):
        c, groups = GROUPINGS[i % len(GROUPINGS)]
        groups = c if groups == "depthwise" else groups
        layers.append({"op": "conv2d", "name": f"conv_{i}", "inputs": [f"x_{i}"], "out_channels": c,
                       "groups": groups, "activation": "relu", **geometry})
    return family(layers)


def pool_family() -> dict:
    return family([{**pool, "name": f"pool_{i}", "inputs": [f"x_{i}"]} for i, pool in enumerate(POOLS)])


def upsample_family() -> dict:
    return family([{"op": "upsample2d", "name": f"up_{i}", "inputs": [f"x_{i}"], **up}
                   for i, up in enumerate(UPSAMPLES)], shape=(3, 5, 7))


def fused_pool_family() -> dict:
    """conv (stride 1) then a pool: non-overlapping rectangular windows fuse into the conv's store;
    a pool overlapping in one dimension only, or with padding, must not (and must still be right)."""
    pools = [dict(op="max_pool2d", kernel_size=[2, 4]), dict(op="avg_pool2d", kernel_size=[4, 2]),
             dict(op="avg_pool2d", kernel_size=[1, 2]),
             dict(op="max_pool2d", kernel_size=[2, 3], stride=[2, 2]),  # overlaps in W only
             dict(op="avg_pool2d", kernel_size=[3, 3], stride=[3, 2]),  # overlaps in W only
             dict(op="max_pool2d", kernel_size=[2, 2], padding=[1, 0])]
    layers = []
    for i, pool in enumerate(pools):
        layers += [{"op": "conv2d", "name": f"c_{i}", "inputs": [f"x_{i}"], "out_channels": 6,
                    "kernel_size": [3, 1], "padding": [1, 0]},
                   {**pool, "name": f"p_{i}", "inputs": [f"c_{i}"]}]
    spec = family(layers)
    spec["inputs"] = spec["inputs"][:len(pools)]
    spec["outputs"] = [f"p_{i}" for i in range(len(pools))]
    return spec


FAMILIES = {"conv": conv_family, "pool": pool_family, "upsample": upsample_family, "fused_pool": fused_pool_family}


def inputs_of(model, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in model.input_shapes.items()}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_grid_on_numpy_matches_pytorch_float64(name):
    spec = FAMILIES[name]()
    model = cnngraph.compile(spec, batch_size=2, device="cpu")
    xs = inputs_of(model)
    got = model(xs)
    want = run_spec(spec, {k: v.astype(np.float64) for k, v in model.weights.items()},
                    {k: v.astype(np.float64) for k, v in xs.items()})
    for out in spec["outputs"]:
        assert got[out].shape == want[out].shape, out
        assert rel_err(got[out], want[out]) <= 1e-5, (out, rel_err(got[out], want[out]))


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_grid_kernels_match_numpy(name, device):
    spec = FAMILIES[name]()
    ref = cnngraph.compile(spec, batch_size=2, device="cpu")
    model = cnngraph.compile(spec, batch_size=2, device=device, weights=ref.weights)
    xs = inputs_of(ref)
    want = ref(xs)
    for _ in range(2):
        model.backend.poison()
        got = model(xs)
        for out in spec["outputs"]:
            assert np.isfinite(got[out]).all(), f"{out}: unwritten (NaN) elements"
            assert rel_err(got[out], want[out]) <= 1e-5, (out, rel_err(got[out], want[out]))


def test_the_grid_is_rectangular_and_fuses_only_non_overlapping_pools():
    assert all(c["kernel_size"][0] != c["kernel_size"][1] or c["stride"][0] != c["stride"][1] for c in CONVS)
    assert any(c["stride"][0] != c["stride"][1] for c, (_, g) in zip(CONVS, itertools.cycle(GROUPINGS))
               if g == "depthwise")  # a depthwise conv with a rectangular stride
    g = cnngraph.plan(fused_pool_family(), 1).graph
    fused = {layer for n in g.graph["order"] for layer in g.nodes[n]["layers"] if g.nodes[n]["compute"].pool}
    assert fused == {"c_0", "p_0", "c_1", "p_1", "c_2", "p_2"}  # the overlapping and padded pools stay separate
