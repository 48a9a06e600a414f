"""Extreme inputs for the kernels that are not activations (those are in test_activation_tails.py),
on every backend, from one table: large logits into softmax (x100, x500: only a max-subtracting
softmax survives), a layer norm of values with a large common offset (a one-pass variance cancels
to nonsense), pools and a conv fed +-Inf and NaN, and global average pooling of large values.
Each case is compared with PyTorch in float64 (NaN where PyTorch gives NaN)."""

from __future__ import annotations

import numpy as np
import pytest

import cnngraph
from test_backends import BACKENDS
from torch_oracle import run_spec


def net(shape, layers):
    return {"format_version": 1, "name": "extreme", "inputs": [{"name": "x", "shape": list(shape)}], "layers": layers}


def logits(scale):
    return lambda rng, shape: (rng.standard_normal(shape) * scale).astype(np.float32)


def offset(base, spread):
    return lambda rng, shape: (base + spread * rng.standard_normal(shape)).astype(np.float32)


def with_specials(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=max(3, flat.size // 20), replace=False)
    flat[picks[0::3]], flat[picks[1::3]], flat[picks[2::3]] = np.inf, -np.inf, np.nan
    return x


CASES = {  # name -> (spec, input maker, relative tolerance)
    "softmax_logits_x100": (net([1000], [{"op": "softmax"}]), logits(100), 1e-5),
    "softmax_logits_x500": (net([1000], [{"op": "softmax"}]), logits(500), 1e-5),
    "softmax_channels_x500": (net([16, 3, 3], [{"op": "softmax", "axis": 1}]), logits(500), 1e-5),
    "layer_norm_offset_1e4": (net([64], [{"op": "layer_norm"}]), offset(1e4, 1.0), 1e-3),
    "layer_norm_channels_offset_1e3": (net([32, 4, 4], [{"op": "layer_norm"}]),
                                       offset(1e3, 0.5), 1e-3),
    "max_pool_inf_nan": (net([4, 8, 8], [{"op": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1}]),
                         with_specials, 1e-6),
    "avg_pool_inf_nan": (net([4, 8, 8], [{"op": "avg_pool2d", "kernel_size": 2}]), with_specials, 1e-6),
    "global_avg_pool_large": (net([8, 7, 7], [{"op": "global_avg_pool2d"}]), offset(3e37, 1e36), 1e-5),
    # nearest to a size is a copy: an infinite neighbour must not leak into a copied value
    "upsample_nearest_to_size_inf_nan": (net([3, 5, 6], [{"op": "upsample2d", "size": [7, 9]}]), with_specials, 0.0),
    "conv_relu6_inf_nan": (net([3, 6, 6], [{"op": "conv2d", "out_channels": 4, "kernel_size": 1,
                                            "activation": "relu6"}]), with_specials, 1e-5),
}


@pytest.mark.parametrize("device", ["cpu", *BACKENDS])
@pytest.mark.parametrize("case", sorted(CASES))
def test_extreme_inputs_match_pytorch_float64(case, device):
    spec, make, rtol = CASES[case]
    model = cnngraph.compile(spec, batch_size=2, device=device)
    x = make(np.random.default_rng(0), (2, *spec["inputs"][0]["shape"]))
    want = next(iter(run_spec(spec, {k: v.astype(np.float64) for k, v in model.weights.items()},
                              {"x": x.astype(np.float64)}).values()))
    if hasattr(model.backend, "poison"):
        model.backend.poison()
    with np.errstate(all="ignore"):
        got = model(x).astype(np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)), "NaN where PyTorch has none, or none where it has"
    assert np.array_equal(got[np.isinf(want)], want[np.isinf(want)]), "infinities differ"
    finite = np.isfinite(want)
    scale = max(np.abs(want[finite]).max(initial=0.0), 1e-30)
    assert np.all(np.abs(got[finite] - want[finite]) <= rtol * scale), np.abs(got[finite] - want[finite]).max()
