"""A geometry grid for the window kernels: convolutions (plain, grouped, depthwise, and a conv whose
pool fuses into its store), pools and upsampling, with different values in H and W for every
kernel, stride, dilation and padding, odd image sizes that divide no tile, ceil_mode and
count_include_pad both ways. Square cases let a kernel that swaps H and W (the vertical stride for
the horizontal one, say) pass; these do not.

Every case is a layer of its own reading its own input, all in one network per family, so one
OpenCL build covers a family. Each output is compared with float64 PyTorch (NumPy backend), and
the OpenCL (PoCL, arena poisoned) and CUDA outputs with the NumPy backend's.

The grid is driven by the op registry: every op in `OPS` is covered by some family (a test checks
it, and that every field of every op's schema takes a value other than its default somewhere), so
a new op fails here until it gets a family. Beyond the window kernels: every activation with each
of its parameter variants, standalone, on images and vectors; mul/sub/div with every broadcasting
pattern; add of 2..5 inputs; scale; layer and batch norm; softmax over every axis; mean and the
global pool; slice, pad, channel shuffle, concat, flatten, reshape, dropout; linear on odd sizes;
and zero pads folded into the padding of convs (asymmetric)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

import cnngraph
from cnngraph.ops import ACTIVATION, OPS, ops_with
from cnngraph.ops.arithmetic import Binary
from test_backends import BACKENDS, NODE_TOL, node_errors, rel_err
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
                       "groups": groups, "activation": "relu", **geometry, **({"bias": False} if i % 3 == 2 else {})})
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
             dict(op="max_pool2d", kernel_size=[2, 2], padding=[1, 0]),
             dict(op="max_pool2d", kernel_size=[2, 2], stride=[2, 1]),  # overlaps in W only, a window that fits
             dict(op="avg_pool2d", kernel_size=[2, 4], stride=[1, 4])]  # overlaps in H only
    layers = []
    for i, pool in enumerate(pools):
        layers += [{"op": "conv2d", "name": f"c_{i}", "inputs": [f"x_{i}"], "out_channels": 6,
                    "kernel_size": [3, 1], "padding": [1, 0]},
                   {**pool, "name": f"p_{i}", "inputs": [f"c_{i}"]}]
    spec = family(layers)
    spec["inputs"] = spec["inputs"][:len(pools)]
    spec["outputs"] = [f"p_{i}" for i in range(len(pools))]
    return spec


def cases_family(cases: list[tuple[dict, list[tuple]]]) -> dict:
    """One network of (layer fields, per-sample input shapes) cases: case i reads its own network
    inputs x{i}_0, x{i}_1, ...; every layer is an output, so none fuses with another."""
    inputs, layers = [], []
    for i, (fields, shapes) in enumerate(cases):
        names = [f"x{i}_{j}" for j in range(len(shapes))]
        inputs += [{"name": n, "shape": list(shape)} for n, shape in zip(names, shapes)]
        layers.append({**fields, "name": f"{fields['op']}_{i}", "inputs": names})
    return {"format_version": 1, "name": "grid", "inputs": inputs, "layers": layers,
            "outputs": [layer["name"] for layer in layers]}


IMAGE = (7, 11, 13)  # odd in every dimension: divides no tile or vector width


def activation_family() -> dict:
    """Every activation op of the registry, each of its parameter variants on an odd image, and
    the first one on a vector and on a 1x1 image; standalone layers (read from network inputs, so
    nothing to fuse into). Inputs are scaled by 4 (`INPUT_SCALE`) to reach relu6's and the hard
    activations' corners (+-3, 6)."""
    cases = []
    for op in ops_with(ACTIVATION):
        variants = OPS[op].variants
        cases += [({"op": op, **v}, [IMAGE]) for v in variants]
        cases += [({"op": op, **variants[0]}, [(13,)]), ({"op": op, **variants[-1]}, [(5, 1, 1)])]
    return cases_family(cases)


BROADCASTS = [(IMAGE, IMAGE), (IMAGE, (7, 1, 1)), ((1, 1, 1), IMAGE), ((1, 11, 1), (7, 1, 13)),
              ((7, 1, 13), (1, 11, 1)), ((7, 11, 1), (1, 1, 13)), ((1, 11, 13), (7, 11, 1)), ((13,), (1,)),
              ((1,), (13,)), ((13,), (13,))]


def elementwise_family() -> dict:
    """Every two-operand op of the registry (mul, sub, div) with every broadcasting pattern (per
    channel, scalar first, both operands broadcast, vectors); add of 2, 3 and 5 inputs; scale."""
    binary = [op for op, cls in OPS.items() if issubclass(cls, Binary)]
    cases = [({"op": op}, list(shapes)) for op in binary for shapes in BROADCASTS]
    cases += [({"op": "add"}, [IMAGE] * 2), ({"op": "add"}, [(3, 5, 9)] * 3), ({"op": "add"}, [(17,)] * 5),
              ({"op": "add"}, [(1, 1, 1)] * 2)]
    cases += [({"op": "scale"}, [IMAGE]), ({"op": "scale"}, [(13,)]), ({"op": "scale"}, [(1, 11, 13)]),
              ({"op": "scale"}, [(9, 1, 1)])]
    return cases_family(cases)


def norm_family() -> dict:
    """layer_norm over the channels of an image (ConvNeXt's) and over the features of a vector,
    with and without the affine, down to one channel (the mean is the value: the output is the
    bias); batch_norm2d unfused (it reads a network input), odd shapes, two eps."""
    return cases_family([
        ({"op": "layer_norm"}, [IMAGE]), ({"op": "layer_norm", "eps": 1e-3}, [(13, 1, 1)]),
        ({"op": "layer_norm", "elementwise_affine": False}, [(3, 5, 11)]),
        ({"op": "layer_norm"}, [(1, 11, 13)]), ({"op": "layer_norm"}, [(37,)]),
        ({"op": "layer_norm", "eps": 1e-6, "elementwise_affine": False}, [(5,)]),
        ({"op": "batch_norm2d"}, [IMAGE]), ({"op": "batch_norm2d", "eps": 0.1}, [(1, 5, 3)]),
        ({"op": "batch_norm2d"}, [(13, 1, 1)]), ({"op": "batch_norm2d", "eps": 1e-3}, [(5, 1, 9)])])


def reduce_family() -> dict:
    """softmax over each axis of an image (positive and negative) and of a vector, and over an
    axis of size 1; mean over H and W written every way, with and without keepdim; the global
    pool, down to 1x1 and one-row images."""
    softmax = [({"op": "softmax", "axis": a}, [IMAGE]) for a in (1, 2, 3, -1, -2, -3)]
    softmax += [({"op": "softmax", "axis": 1}, [(13,)]), ({"op": "softmax", "axis": -1}, [(1,)]),
                ({"op": "softmax", "axis": 2}, [(5, 1, 7)])]
    mean = [({"op": "mean", "dim": d, "keepdim": k}, [shape])
            for (d, k), shape in zip([([2, 3], False), ([-1, -2], True), ([3, -2], False), ([-2, 3], True)],
                                     [IMAGE, (5, 1, 13), (3, 11, 1), (1, 7, 9)])]
    gap = [({"op": "global_avg_pool2d"}, [shape]) for shape in (IMAGE, (5, 1, 1), (3, 1, 13), (2, 17, 3))]
    return cases_family(softmax + mean + gap)


def layout_family() -> dict:
    """Ops that move data: slice of channels (negative starts and ends, ends past the channels,
    of vectors), pad (asymmetric, constant with a value, reflect, replicate), channel_shuffle
    (groups 1 to C), concat of 2 to 4 inputs (images and vectors), flatten, reshape (to a vector,
    to another image, from a vector, with -1 in each place), dropout kept as an output."""
    slices = [({"op": "slice", **f}, [shape]) for f, shape in [
        ({"start": 1, "end": 5}, IMAGE), ({"start": -3}, IMAGE), ({"start": 2, "end": -1}, IMAGE),
        ({"start": -6, "end": -2}, IMAGE), ({"end": 1}, IMAGE), ({"start": 5, "end": 100}, IMAGE),
        ({"start": 3, "end": 10}, (13,)), ({"start": -20, "end": 2}, (13,)), ({"start": -1}, (5, 1, 1))]]
    pads = [({"op": "pad", **f}, [shape]) for f, shape in [
        ({"padding": [1, 2, 0, 3]}, IMAGE), ({"padding": [0, 0, 2, 1], "value": -1.5}, IMAGE),
        ({"padding": 1, "value": 0.25}, (3, 1, 1)),
        ({"padding": [2, 1, 3, 0], "mode": "reflect"}, IMAGE), ({"padding": [12, 0, 0, 10], "mode": "reflect"}, IMAGE),
        ({"padding": 2, "mode": "replicate"}, IMAGE), ({"padding": [0, 4, 1, 0], "mode": "replicate"}, (3, 1, 5))]]
    shuffles = [({"op": "channel_shuffle", "groups": g}, [shape]) for g, shape in [
        (2, (6, 11, 13)), (3, (6, 11, 13)), (5, (15, 7, 5)), (3, (15, 7, 5)), (15, (15, 3, 1)), (1, (4, 3, 5)),
        (4, (12, 1, 13))]]
    concats = [({"op": "concat"}, shapes) for shapes in [
        [(3, 11, 13), (4, 11, 13)], [(1, 5, 7), (4, 5, 7), (2, 5, 7)], [(2, 3, 1)] * 4, [(2,), (5,), (1,)],
        [(7, 1, 1), (1, 1, 1)]]]
    reshapes = [({"op": "reshape", "shape": s}, [shape]) for s, shape in [
        ([-1], IMAGE), ([13, 7, 11], IMAGE), ([1, -1, 13], IMAGE), ([7, 11, 13], (1001,)), ([3, -1, 1], (12,)),
        ([5, 1, 1], (5,))]]
    others = [({"op": "flatten"}, [IMAGE]), ({"op": "flatten"}, [(7, 1, 1)]), ({"op": "flatten"}, [(13,)]),
              ({"op": "dropout", "p": 0.3}, [IMAGE]), ({"op": "dropout"}, [(13,)])]
    return cases_family(slices + pads + shuffles + concats + reshapes + others)


def linear_family() -> dict:
    """linear on odd sizes, around and across the GEMM tiles, with and without bias, with an
    activation field."""
    return cases_family([({"op": "linear", **f}, [(features,)]) for f, features in [
        ({"out_features": 7}, 13), ({"out_features": 1}, 1), ({"out_features": 19, "bias": False}, 37),
        ({"out_features": 31, "activation": {"op": "leaky_relu", "negative_slope": 0.2}}, 5),
        ({"out_features": 67}, 130), ({"out_features": 3, "activation": {"op": "gelu", "approximate": "tanh"}}, 129),
        ({"out_features": 65, "bias": False, "activation": "hardswish"}, 65)]])


DEPTHWISE = [  # (fields, input shape) of a depthwise conv (6 channels here, 16 in the channels_last family)
    ({"kernel_size": 3, "padding": 1, "activation": "relu6"}, (6, 11, 13)),
    ({"kernel_size": 3, "padding": 1, "bias": False}, (6, 5, 3)),
    ({"kernel_size": [5, 3], "stride": [1, 2], "padding": [2, 1]}, (6, 9, 14)),
    ({"kernel_size": 7, "padding": 3, "activation": "silu"}, (6, 8, 10)),
    ({"kernel_size": 3, "dilation": [1, 31], "padding": [1, 31]}, (6, 4, 9)),
    ({"kernel_size": 3, "dilation": [2, 40], "padding": [2, 40], "bias": False}, (6, 7, 6))]


def depthwise_family() -> dict:
    """Depthwise convs whose threads each compute up to 4 outputs of a row from a register window
    of the input row: widths that leave a partial group (13 = 3 * 4 + 1, 3 < 4), a stride across
    the window, a 7x7 kernel, and dilations that shrink the group so the window fits 64 registers
    (2 outputs at DW 31) or do not fit one output (DW 40: taps read where they lie)."""
    return cases_family([({"op": "conv2d", "out_channels": 6, "groups": 6, **f}, [shape]) for f, shape in DEPTHWISE])


def two_tap_family() -> dict:
    """GEMM convs whose window has exactly 2 taps (1x2, 2x1): the smallest kernel that reads its
    reduction through the tap table."""
    return cases_family([({"op": "conv2d", **f}, [(6, 9, 10)]) for f in [
        {"out_channels": 5, "kernel_size": [1, 2], "padding": [0, 1]},
        {"out_channels": 6, "kernel_size": [2, 1], "stride": [2, 1], "dilation": [2, 1], "groups": 2}]])


CHANNELS_LAST_POOLS = POOLS[:6] + [{"op": "global_avg_pool2d"}, {"op": "mean", "keepdim": True}]


# after the depthwise chain: its last two outputs concatenated, 16 of the 32 channels, shuffled
CHANNELS_LAST_MOVES = [
    {"op": "concat", "name": "cat", "inputs": [f"dw_{len(DEPTHWISE) - 2}", f"dw_{len(DEPTHWISE) - 1}"]},
    {"op": "slice", "name": "slice", "start": 8, "end": 24},
    {"op": "channel_shuffle", "name": "shuffle", "groups": 4},
    # elementwise ops: a batch norm (per-channel constants), a squeeze-excitation mul by its (C, 1, 1)
    # gate, an add; a layer norm; then convs with fused pools of 2 and 4 pixels (11x7 -> 5x7 -> 5x1),
    # upsampled (nearest, bilinear)
    {"op": "batch_norm2d", "name": "bn"}, {"op": "global_avg_pool2d", "name": "squeeze"},
    {"op": "conv2d", "name": "excite", "out_channels": 16, "kernel_size": 1, "activation": "sigmoid"},
    {"op": "mul", "name": "gated", "inputs": ["bn", "excite"]},
    {"op": "add", "name": "sum", "inputs": ["gated", "shuffle"]},
    {"op": "layer_norm", "name": "norm"},
    {"op": "conv2d", "name": "conv_pool2", "out_channels": 16, "kernel_size": 3, "padding": 1, "activation": "relu"},
    {"op": "avg_pool2d", "name": "pool2", "kernel_size": [2, 1]},
    {"op": "conv2d", "name": "conv_pool4", "out_channels": 16, "kernel_size": [3, 1], "padding": [1, 0]},
    {"op": "max_pool2d", "name": "pool4", "kernel_size": [1, 4]},
    {"op": "upsample2d", "name": "up", "scale_factor": [1, 3]},  # nearest: 5x3
    {"op": "upsample2d", "name": "resize", "size": [7, 4], "mode": "bilinear"}]
CHANNELS_LAST_GLOBAL = {"squeeze"}  # the tail's tensors that stay NCHW: (N, C, 1, 1)
CHANNELS_LAST_FUSED = {"conv_pool2", "conv_pool4"}  # into their pools


def channels_last_family() -> dict:
    """Every conv geometry, and pools, between two 1x1 convs: at tf32 the tensors between them are
    stored NHWC (passes/assign_layout.py), and so are the 3-channel inputs, padded with zeros to 4
    channels (8 at fp16/bf16), which the first 1x1 conv reads over zero weight rows; so each
    geometry's tensor-core kernel copies an NHWC input (16 channels in 1 group, 4 of 4 or 2 of 8: 16
    bytes at a time, or 8 or 4 where a group is not whole 16-byte vectors) and stores an NHWC output
    (24 channels: in pairs where a group's are even, 24 or 6; 3 of 8 one at a time), and the pools
    read and write NHWC (the global ones read it). Then the depthwise geometries, one after another,
    a concat, a slice and a shuffle, elementwise ops, a layer norm, pooled convs and upsamplings,
    between two 1x1 convs (16 channels): NHWC in and out."""
    layers = []
    middles = [{"op": "conv2d", "out_channels": 24, "groups": (1, 4, 8)[i % 3], "activation": "relu", **geometry}
               for i, geometry in enumerate(CONVS)] + CHANNELS_LAST_POOLS
    for i, middle in enumerate(middles):
        layers += [{"op": "conv2d", "name": f"in_{i}", "inputs": [f"x_{i}"], "out_channels": 16, "kernel_size": 1},
                   {**middle, "name": f"mid_{i}"},
                   {"op": "conv2d", "name": f"out_{i}", "out_channels": 8, "kernel_size": 1}]
    chain = len(middles)  # the depthwise chain reads the last input
    layers += [{"op": "conv2d", "name": f"in_{chain}", "inputs": [f"x_{chain}"], "out_channels": 16, "kernel_size": 1},
               *({"op": "conv2d", "name": f"dw_{i}", "out_channels": 16, "groups": 16, **f}
                 for i, (f, _) in enumerate(DEPTHWISE)),
               *CHANNELS_LAST_MOVES,
               {"op": "conv2d", "name": f"out_{chain}", "out_channels": 8, "kernel_size": 1}]
    return {"format_version": 1, "name": "grid", "layers": layers,
            "inputs": [{"name": f"x_{i}", "shape": [3, 11, 13]} for i in range(chain + 1)],
            "outputs": [f"out_{i}" for i in range(chain + 1)]}


FOLDED_PADS = [  # (pad, conv): zero pads fold into the conv's padding, asymmetric; the others stay
    ({"padding": [0, 1, 2, 1]}, dict(out_channels=5, kernel_size=[3, 2], stride=[2, 1], activation="relu6")),
    ({"padding": [3, 0, 0, 1]}, dict(out_channels=7, kernel_size=[2, 3], stride=[1, 2], groups=7,  # depthwise
                                     activation={"op": "leaky_relu", "negative_slope": 0.2})),
    ({"padding": [1, 2, 0, 0]}, dict(out_channels=4, kernel_size=3, padding=[1, 0], dilation=[1, 2])),
    ({"padding": [2, 0, 1, 1]}, dict(out_channels=7, kernel_size=[1, 3], stride=[3, 2], padding=[0, 0, 2, 1],
                                     groups=7)),
    ({"padding": [1, 1, 2, 0], "mode": "reflect"}, dict(out_channels=3, kernel_size=[3, 2])),
    ({"padding": [0, 2, 1, 0], "value": 0.5}, dict(out_channels=5, kernel_size=[2, 2], stride=[1, 2])),
]


def folded_pad_family() -> dict:
    """pad -> conv pairs: a zero pad folds into the conv's own padding, which becomes asymmetric
    ([top, left, bottom, right]), plain and depthwise, with an activation field or not, on top of a
    conv's own padding; a reflect pad and a pad with a value do not fold (and must still be right)."""
    layers = []
    for i, (pad, conv) in enumerate(FOLDED_PADS):
        layers += [{"op": "pad", "name": f"p_{i}", "inputs": [f"x_{i}"], **pad},
                   {"op": "conv2d", "name": f"c_{i}", "inputs": [f"p_{i}"], **conv}]
    spec = family(layers, shape=IMAGE)
    spec["inputs"] = spec["inputs"][:len(FOLDED_PADS)]
    spec["outputs"] = [f"c_{i}" for i in range(len(FOLDED_PADS))]
    return spec


FAMILIES = {"conv": conv_family, "pool": pool_family, "upsample": upsample_family, "fused_pool": fused_pool_family,
            "activation": activation_family, "elementwise": elementwise_family, "norm": norm_family,
            "reduce": reduce_family, "layout": layout_family, "linear": linear_family, "folded_pad": folded_pad_family,
            "depthwise": depthwise_family, "two_taps": two_tap_family, "channels_last": channels_last_family}
INPUT_SCALE = {"activation": 4.0}  # standard normal inputs times this
# ops of the registry no family needs to cover, each with the reason (none at present: dropout, an
# identity, is covered as a network output, which keeps it as a copy kernel)
EXCLUDED: dict[str, str] = {}


def inputs_of(model, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * scale).astype(np.float32) for name, shape in model.input_shapes.items()}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_grid_on_numpy_matches_pytorch_float64(name):
    spec = FAMILIES[name]()
    model = cnngraph.compile(spec, batch_size=2, device="cpu")
    xs = inputs_of(model, scale=INPUT_SCALE.get(name, 1.0))
    got = model(xs)
    want = run_spec(spec, {k: v.astype(np.float64) for k, v in model.weights.items()},
                    {k: v.astype(np.float64) for k, v in xs.items()})
    for out in spec["outputs"]:
        assert got[out].shape == want[out].shape, out
        assert rel_err(got[out], want[out]) <= 1e-5, (out, rel_err(got[out], want[out]))


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "channels_last" else n
                                  for n in sorted(FAMILIES)])  # at fp32 it repeats the conv family
def test_grid_kernels_match_numpy(name, device):
    spec = FAMILIES[name]()
    ref = cnngraph.compile(spec, batch_size=2, device="cpu")
    model = cnngraph.compile(spec, batch_size=2, device=device, weights=ref.weights)
    xs = inputs_of(ref, scale=INPUT_SCALE.get(name, 1.0))
    want = ref(xs)
    for _ in range(2):
        model.backend.poison()
        got = model(xs)
        for out in spec["outputs"]:
            assert np.isfinite(got[out]).all(), f"{out}: unwritten (NaN) elements"
            assert rel_err(got[out], want[out]) <= 1e-5, (out, rel_err(got[out], want[out]))


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("precision", ["tf32", "fp16"])
@pytest.mark.parametrize("name", ["conv", "fused_pool", "linear", "two_taps", "channels_last"])
def test_grid_gemm_kernels_at_reduced_precision_match_numpy_node_by_node(name, precision, device):
    """The tensor-core kernels (TF32 with its padded 16-byte weight copies and its NHWC inputs and
    outputs, 16-bit with ldmatrix; the CUDA-core one for fused pools) over the grid's geometries,
    each node on the NumPy emulation's own inputs (see test_backends.node_errors)."""
    errors = node_errors(FAMILIES[name](), device, batch=2, precision=precision)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= NODE_TOL[precision], (worst, errors[worst])


def test_the_grid_is_rectangular_and_fuses_only_non_overlapping_pools():
    assert all(c["kernel_size"][0] != c["kernel_size"][1] or c["stride"][0] != c["stride"][1] for c in CONVS)
    assert any(c["stride"][0] != c["stride"][1] for c, (_, g) in zip(CONVS, itertools.cycle(GROUPINGS))
               if g == "depthwise")  # a depthwise conv with a rectangular stride
    g = cnngraph.plan(fused_pool_family(), 1).graph
    fused = {layer for n in g.graph["order"] for layer in g.nodes[n]["layers"] if g.nodes[n]["compute"].pool}
    assert fused == {"c_0", "p_0", "c_1", "p_1", "c_2", "p_2"}  # the overlapping and padded pools stay separate


def test_every_op_of_the_registry_is_in_the_grid():
    """A new op fails here until a family covers it (or EXCLUDED says why not)."""
    covered = {layer["op"] for build in FAMILIES.values() for layer in build()["layers"]}
    assert not set(EXCLUDED) & covered, "an excluded op is covered after all: drop it from EXCLUDED"
    assert set(OPS) - set(EXCLUDED) <= covered, f"ops in no family: {sorted(set(OPS) - set(EXCLUDED) - covered)}"
    assert set(ops_with(ACTIVATION)) - covered == set()


def test_every_field_of_every_op_takes_a_value_other_than_its_default():
    """Each parameter an op's schema offers is exercised away from its default somewhere in the
    grid (an ignored `bias: false` or `keepdim: true` would otherwise pass unnoticed)."""
    given: dict[str, set[str]] = {op: set() for op in OPS}
    for build in FAMILIES.values():
        for layer in build()["layers"]:
            fields = OPS[layer["op"]].model_fields
            given[layer["op"]] |= {k for k, v in layer.items()
                                   if k not in ("op", "name", "inputs") and (fields[k].is_required() or v != fields[k].default)}
    missing = {op: sorted(set(OPS[op].model_fields) - {"op", "name", "inputs"} - given[op])
               for op in OPS if op not in EXCLUDED}
    assert not {op: m for op, m in missing.items() if m}


@pytest.mark.parametrize("name", ["activation", "elementwise", "norm", "reduce", "layout", "linear"])
def test_the_new_families_run_every_layer_as_its_own_kernel(name):
    """Every layer is an output, so no pass merges it away: each op runs standalone as it is
    written (a batch norm unfolded, an activation not fused into a producer)."""
    spec = FAMILIES[name]()
    g = cnngraph.plan(spec, 1).graph
    layers = {layer["name"]: layer["op"] for layer in spec["layers"]}
    assert {n: (g.nodes[n]["compute"].op, g.nodes[n]["layers"]) for n in g.graph["order"]} == \
        {n: (op, [n]) for n, op in layers.items()}


def test_the_channels_last_family_stores_the_middle_tensors_nhwc_at_tf32():
    program = cnngraph.plan(channels_last_family(), 2, precision="tf32").program
    windows = len(CONVS) + len(CHANNELS_LAST_POOLS) - 2  # the global pools' outputs are (N, C, 1, 1)
    chain = windows + 2
    assert program.layouts == {**{f"{n}_{i}": "NHWC" for n in ("in", "mid") for i in range(chain + 1)
                                  if (n, i) not in (("mid", windows), ("mid", windows + 1), ("mid", chain))},
                               **{f"dw_{i}": "NHWC" for i in range(len(DEPTHWISE))},
                               **{layer["name"]: "NHWC" for layer in CHANNELS_LAST_MOVES
                                  if layer["name"] not in CHANNELS_LAST_GLOBAL | CHANNELS_LAST_FUSED},
                               **{x: "NHWC" for x in program.inputs}}
    assert program.padded_channels == {x: 4 for x in program.inputs}
    assert all("_nhwc" in l.kernel for l in program.launches if l.node not in (f"out_{windows}", f"out_{windows + 1}"))
    assert sum("_dw" in l.kernel for l in program.launches) == len(DEPTHWISE)
    assert cnngraph.plan(channels_last_family(), 2).program.layouts == {}  # fp32: NCHW everywhere


def test_zero_pads_fold_into_the_convs_and_the_others_do_not():
    g = cnngraph.plan(folded_pad_family(), 1).graph
    merged = {n: g.nodes[n]["layers"] for n in g.graph["order"]}
    folded = [i for i, (pad, _) in enumerate(FOLDED_PADS) if pad.get("mode", "constant") == "constant"
              and not pad.get("value")]
    assert folded == [0, 1, 2, 3]
    assert merged == {**{f"c_{i}": [f"p_{i}", f"c_{i}"] for i in folded},
                      **{n: [n] for i in range(len(FOLDED_PADS)) if i not in folded for n in (f"p_{i}", f"c_{i}")}}
