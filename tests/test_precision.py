"""precision="tf32": TF32 rounding as the GPU rounds, the NumPy backend's emulation against
float64 PyTorch, the tensor-core kernel (`conv_mma`) on PoCL through the exact mma emulation
against the NumPy backend, planted mistakes the emulation must catch, the NVRTC/SASS checks
(HMMA in every tensor-core kernel, no stack), and on a GPU the same comparisons on CUDA."""

from __future__ import annotations

import copy
import itertools
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import cnngraph
from cnngraph.backends.opencl_backend import OpenCLBackend
from cnngraph.codegen.dialects import CUDA
from cnngraph.codegen.lower import ROUNDED_STORE
from cnngraph.codegen.schedules import MMA_DEEP_TILES, MMA_TILES
from cnngraph.errors import DeviceError, SpecError
from cnngraph.graph import compute_of, stored_shape
from cnngraph.precision import round_storage, round_tf32, vector_width
from test_backends import CUDA_REASON, EXAMPLES, NODE_TOL, NVRTC_REASON, OPENCL_REASON, node_rel_err, rel_err
from test_backends import example as reduced_example

needs_opencl = pytest.mark.skipif(OPENCL_REASON is not None, reason=str(OPENCL_REASON))
needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(CUDA_REASON is not None, reason=str(CUDA_REASON))]


def tf32_reference(x: np.ndarray) -> np.ndarray:
    """Round to 11 significant bits, half away from zero, in float64 arithmetic (frexp), as an
    independent check of the bit-twiddling `round_tf32`."""
    x64 = x.astype(np.float64)
    mantissa, exponent = np.frexp(x64)  # |mantissa| in [0.5, 1)
    scaled = np.abs(mantissa) * 2.0 ** 11
    rounded = np.copysign(np.floor(scaled + 0.5) / 2.0 ** 11, mantissa)
    return np.where(np.isfinite(x64), np.ldexp(rounded, exponent), x64).astype(np.float32)


def test_round_tf32_matches_an_independent_rounding():
    rng = np.random.default_rng(0)
    x = np.concatenate([(rng.standard_normal(20000) * 10.0 ** rng.integers(-6, 6, 20000)).astype(np.float32),
                        np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)])
    ties = (1.0 + np.arange(1, 200, 2) * 2.0 ** -11).astype(np.float32)  # exactly halfway between TF32 values
    x = np.concatenate([x, ties, -ties])
    got, want = round_tf32(x), tf32_reference(x)
    assert np.array_equal(got.view(np.uint32)[np.isfinite(x)], want.view(np.uint32)[np.isfinite(x)])
    assert np.isnan(got[np.isnan(x)]).all() and np.array_equal(got[np.isinf(x)], x[np.isinf(x)])
    assert (got.view(np.uint32) & 0x1FFF == 0)[np.isfinite(x)].all()  # 13 low mantissa bits cleared
    assert np.array_equal(np.abs(round_tf32(ties)), np.abs(ties) + 2.0 ** -11)  # ties away from zero
    out = np.empty_like(x)
    assert round_tf32(x, out=out) is out and np.array_equal(out.view(np.uint32), got.view(np.uint32))
    x[-1] = np.uint32(0x7FFFFFFF).view(np.float32)  # the GPUs' NaN: adding half an ulp would wrap it to -0
    in_place = x.copy()
    assert round_tf32(in_place, out=in_place) is in_place and np.isnan(in_place[-1])
    assert np.array_equal(in_place.view(np.uint32), round_tf32(x).view(np.uint32))


def net(layers, shape, inputs=None):
    return {"format_version": 1, "name": "t", "inputs": inputs or [{"name": "x", "shape": list(shape)}],
            "layers": layers}


# An op on the network input shares the input's layout, and an input is stored NHWC only where
# tensor-core convs alone read it: a conv after this one reads NCHW (the 4-byte cp.async path at
# tf32, registers at fp16/bf16). A pool, not an elementwise op, whose output a conv alone reads
# would be stored rounded to TF32 and the conv would not round it.
NCHW_FIRST = {"op": "max_pool2d", "name": "nchw", "kernel_size": 3, "stride": 1, "padding": 1}

# single conv/linear layers covering the kernel's variants: each goes through `conv_mma`
LAYERS = {
    "conv3x3_pad": (net([{"op": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1, "activation": "relu"}],
                        (8, 10, 10)), 2),
    "conv_stride2_ragged": (net([NCHW_FIRST, {"op": "conv2d", "name": "c", "out_channels": 70, "kernel_size": 3,
                                              "stride": 2, "padding": [1, 0, 2, 1]}], (13, 11, 9)), 3),
    "conv1x1_many_channels": (net([{"op": "conv2d", "out_channels": 130, "kernel_size": 1}], (40, 12, 12)), 2),
    "grouped_dilated": (net([{"op": "conv2d", "out_channels": 24, "kernel_size": 3, "groups": 4, "dilation": 2,
                              "padding": 2}], (16, 9, 9)), 2),
    "split_k": (net([{"op": "conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1}], (256, 4, 4)), 1),
    "linear": (net([{"op": "flatten"}, {"op": "linear", "out_features": 9, "activation": "tanh"}], (8, 3, 3)), 3),
    "residual_epilogue": (net([{"op": "conv2d", "name": "a", "out_channels": 8, "kernel_size": 3, "padding": 1},
                               {"op": "conv2d", "name": "b", "out_channels": 8, "kernel_size": 3, "padding": 1},
                               {"op": "add", "inputs": ["a", "b"]}, {"op": "relu"}], (8, 6, 6)), 2),
    "gated": (net([{"op": "global_avg_pool2d", "name": "sq", "inputs": ["x"]},  # registers, not cp.async
                   {"op": "conv2d", "name": "ex", "out_channels": 8, "kernel_size": 1, "activation": "sigmoid"},
                   {"op": "mul", "name": "gated", "inputs": ["x", "ex"]},
                   {"op": "conv2d", "name": "c", "out_channels": 16, "kernel_size": 3, "padding": 1}], (8, 6, 6)), 2),
    "pooled_conv": (net([NCHW_FIRST, {"op": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                         {"op": "max_pool2d", "kernel_size": 2}], (4, 8, 8)), 2),  # windows by warp shuffles
    # a, b and the block's sum r are stored NHWC (passes/assign_layout.py): a is r's residual
    "channels_last_block": (net([
        {"op": "conv2d", "name": "a", "out_channels": 16, "kernel_size": 3, "padding": 1, "activation": "relu"},
        {"op": "conv2d", "name": "b", "out_channels": 16, "kernel_size": 3, "padding": 1, "activation": "relu"},
        {"op": "conv2d", "name": "c", "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"op": "add", "name": "s", "inputs": ["c", "a"]}, {"op": "relu", "name": "r"},
        {"op": "conv2d", "name": "d", "out_channels": 24, "kernel_size": 3, "stride": 2, "padding": [1, 0, 2, 1]}],
        (8, 10, 9)), 3),
    # r = relu(a + x) is NCHW (its residual x, the network input, is) and only the conv d reads it:
    # a stores it rounded to TF32, and d copies it 4 bytes at a time without rounding it again
    "rounded_nchw": (net([
        {"op": "conv2d", "name": "a", "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"op": "add", "name": "s", "inputs": ["a", "x"]}, {"op": "relu", "name": "r"},
        {"op": "conv2d", "name": "d", "out_channels": 12, "kernel_size": 3, "stride": 2, "padding": 1}], (8, 7, 6)), 2),
    "channels_last_split_k": (net([{"op": "conv2d", "name": "a", "out_channels": 256, "kernel_size": 1},
                                   {"op": "conv2d", "name": "b", "out_channels": 64, "kernel_size": 3, "padding": 1}],
                                  (8, 4, 4)), 1),
    # a concat's batch norm (+ relu), a squeeze-excitation mul by its (C, 1, 1) gate and an add, all
    # elementwise on NHWC, a layer norm (a warp per pixel); then two fused pools, 2x2 (NHWC out) and
    # 1x2 (the network's NCHW output)
    "channels_last_elementwise": (net([
        {"op": "conv2d", "name": "a", "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"op": "conv2d", "name": "b", "out_channels": 16, "kernel_size": 1},
        {"op": "concat", "name": "cat", "inputs": ["a", "b"]}, {"op": "batch_norm2d", "name": "bn"},
        {"op": "relu", "name": "r"}, {"op": "global_avg_pool2d", "name": "sq"},
        {"op": "conv2d", "name": "ex", "out_channels": 32, "kernel_size": 1, "activation": "sigmoid"},
        {"op": "mul", "name": "m", "inputs": ["r", "ex"]}, {"op": "add", "name": "s", "inputs": ["m", "cat"]},
        {"op": "layer_norm", "name": "ln"},
        {"op": "conv2d", "name": "p", "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"op": "max_pool2d", "name": "pp", "kernel_size": 2},
        {"op": "conv2d", "name": "q", "out_channels": 24, "kernel_size": 1},
        {"op": "avg_pool2d", "name": "qp", "kernel_size": [1, 2]}], (8, 10, 12)), 3),
    # a squeeze-excitation block whose gated conv (3x3, so through the tap table) reads NHWC
    "channels_last_gated": (net([
        {"op": "conv2d", "name": "a", "out_channels": 16, "kernel_size": 1},
        {"op": "global_avg_pool2d", "name": "sq"},
        {"op": "conv2d", "name": "ex", "out_channels": 16, "kernel_size": 1, "activation": "sigmoid"},
        {"op": "mul", "name": "m", "inputs": ["a", "ex"]},
        {"op": "conv2d", "name": "c", "out_channels": 24, "kernel_size": 3, "padding": 1, "stride": [1, 2]},
        {"op": "conv2d", "name": "d", "out_channels": 8, "kernel_size": 1}], (8, 9, 11)), 3),
    # a shufflenet unit whose channels are not whole 16-byte vectors: its convs copy 10 channels 2 at
    # a time (8 or 4 bytes), 20 at fp16 4 at a time (8 bytes); h1's squeeze-excitation gates b
    "channels_last_narrow": (net([
        {"op": "conv2d", "name": "a", "out_channels": 20, "kernel_size": 1, "activation": "relu"},
        {"op": "slice", "name": "h0", "start": 0, "end": 10},
        {"op": "slice", "name": "h1", "inputs": ["a"], "start": 10, "end": None},
        {"op": "global_avg_pool2d", "name": "sq"},
        {"op": "conv2d", "name": "ex", "out_channels": 10, "kernel_size": 1, "activation": "sigmoid"},
        {"op": "mul", "name": "m", "inputs": ["h1", "ex"]},
        {"op": "conv2d", "name": "b", "out_channels": 10, "kernel_size": 3, "padding": 1, "activation": "relu"},
        {"op": "conv2d", "name": "dw", "out_channels": 10, "kernel_size": 3, "padding": 1, "groups": 10},
        {"op": "concat", "name": "cat", "inputs": ["h0", "dw"]},
        {"op": "channel_shuffle", "name": "sh", "groups": 2},
        {"op": "conv2d", "name": "c", "out_channels": 24, "kernel_size": 3, "padding": 1, "stride": [2, 1]},
        {"op": "conv2d", "name": "d", "out_channels": 8, "kernel_size": 1}], (8, 9, 10)), 3),
}
CHANNELS_LAST = {"channels_last_block": {"x", "a", "b", "r"}, "channels_last_split_k": {"x", "a"},  # NHWC tensors
                 "channels_last_elementwise": {"x", "a", "b", "cat", "r", "ex", "m", "s", "ln", "pp"},
                 "channels_last_gated": {"x", "a", "c"},
                 "channels_last_narrow": {"x", "a", "h0", "h1", "b", "dw", "cat", "sh", "c"}}
# tensors their writers store rounded to TF32: tensor-core convs alone read them (passes/assign_precision.py)
TF32_STORED = {"channels_last_block": {"b", "r"}, "channels_last_split_k": {"a"}, "channels_last_elementwise": {"pp"},
               "channels_last_gated": {"c"}, "channels_last_narrow": {"c"}, "rounded_nchw": {"r"}}
# and in the single-layer cases: the image, where tensor-core convs of one group alone read it
NHWC_TENSORS = {**CHANNELS_LAST, **{case: {"x"} for case in ("conv3x3_pad", "conv1x1_many_channels", "split_k",
                                                              "residual_epilogue")}}


def inputs_for(model, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in model.input_shapes.items()}


def run_poisoned(model, xs):
    model.backend.poison()
    return model(xs)


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_numpy_tf32_is_rounded_and_close_to_float64(case):
    """The NumPy emulation differs from fp32 (it rounds) and stays within TF32's error of float64."""
    from torch_oracle import run_spec

    spec, batch = LAYERS[case]
    fp32 = cnngraph.compile(spec, batch_size=batch, device="cpu")
    tf32 = cnngraph.compile(spec, batch_size=batch, device="cpu", weights=fp32.weights, precision="tf32")
    xs = inputs_for(fp32)
    want = run_spec(spec, {k: v.astype(np.float64) for k, v in fp32.weights.items()},
                    {k: v.astype(np.float64) for k, v in xs.items()})
    want = next(iter(want.values()))
    assert rel_err(tf32(xs), want) <= 5e-3
    assert rel_err(tf32(xs), want) > 10 * rel_err(fp32(xs), want)  # the rounding really happens


def reads_nhwc(program, g, launch) -> bool:
    """The launch's kernel reads its input as NHWC (named so): a tensor stored NHWC, or one pixel
    per sample read by an ungated tensor-core GEMM writing one pixel (the same bytes either way)."""
    source = g.nodes[launch.node]["inputs"][0]
    one_pixel = all(np.prod(g.nodes[t]["shape"][2:]) == 1 for t in (source, launch.node))
    reads = program.layout(source) == "NHWC" or ("MMA_" in launch.body and one_pixel
                                                   and not launch.kernel.startswith("gated"))
    assert reads == ("_nhwc" in launch.kernel and "_nhwc_out" not in launch.kernel), launch.kernel
    return reads


@needs_opencl
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_tensor_core_kernel_on_pocl_matches_numpy_tf32(case):
    spec, batch = LAYERS[case]
    ref = cnngraph.compile(spec, batch_size=batch, device="cpu", precision="tf32")
    model = cnngraph.compile(spec, batch_size=batch, device="opencl", weights=ref.weights, precision="tf32")
    xs = inputs_for(ref)
    want = ref.backend.run_observed(dict(xs))
    model.backend.poison()
    got = model.backend.run_node_by_node({**xs, **want})  # a chain's kernels each on the same inputs
    assert {n: node_rel_err(ref.graph, n, got[n], want[n]) <= 1e-5 for n in want} == {n: True for n in want}
    gemms = [l for l in model.backend.program.launches
             if l.kernel.startswith(("conv", "linear")) and "_dw_" not in l.kernel]  # depthwise: CUDA cores
    assert gemms and all("_tf32" in l.kernel for l in gemms)
    assert all("MMA_TF32(" in l.body for l in gemms)
    for launch in gemms:  # NCHW inputs 4 bytes at a time, but gated (through registers); NHWC 16
        nchw_in = not reads_nhwc(model.backend.program, ref.graph, launch)
        assert ("CP_ASYNC4(" in launch.body) == (nchw_in and not launch.kernel.startswith("gated")), launch.kernel
    assert all(("SHFL_XOR(" in l.body) == ("pool" in l.kernel) for l in gemms)  # fused pools: windows by shuffles
    for launch in gemms:  # the cp.async kernels copy weight rows padded to whole 16-byte copies
        (w,) = [model.backend.program.constants[ref] for _, ref in launch.args if ref.endswith(":w")]
        assert w.shape[-1] % 4 == 0 or "CP_ASYNC16(" not in launch.body
    assert any("CP_ASYNC16(" in l.body for l in gemms)
    assert set(model.backend.program.layouts) == NHWC_TENSORS.get(case, set())


LANDED_ROUNDING = ("TF32_OPERAND(", "ROUND_TF32X", "SCALE_TF32X")  # a tf32 kernel rounding its input in shared memory


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_tensors_only_tensor_core_convs_read_are_stored_rounded(case):
    """Their writer's epilogue ends by rounding (`_round` in its name), the NumPy backend stores
    them rounded too (13 low mantissa bits zero), and their readers leave what lands unrounded;
    every other tf32 kernel rounds its input. Nothing is stored rounded at fp32 or fp16."""
    from cnngraph.codegen.lower import lower

    spec, batch = LAYERS[case]
    model = cnngraph.compile(spec, batch_size=batch, device="cpu", precision="tf32")
    g = model.graph
    stored = {n for n in g if g.nodes[n].get("tf32_stored")}
    assert stored == TF32_STORED.get(case, set())
    observed = model.backend.run_observed(inputs_for(model))
    assert all((observed[n].view(np.uint32) & 0x1FFF == 0).all() for n in stored)
    for launch in lower(g).launches:
        writes = launch.node in stored
        assert (ROUNDED_STORE in launch.body) == writes == ("_round_" in launch.kernel), launch.kernel
        if "MMA_TF32(" in launch.body:
            reads = g.nodes[launch.node]["inputs"][0] in stored
            assert any(word in launch.body for word in LANDED_ROUNDING) != reads, launch.kernel
    for precision in ("fp32", "fp16"):
        g = cnngraph.plan(spec, batch, precision=precision).graph
        assert not any(g.nodes[n].get("tf32_stored") for n in g)


LAST = {"op": "conv2d", "name": "last", "out_channels": 4, "kernel_size": 1}


@pytest.mark.parametrize("layers, stored", [
    ([LAST], {"c"}),
    ([{"op": "max_pool2d", "name": "p", "kernel_size": 2}, LAST], {"p"}),  # the max of rounded values: the rounded max
    ([{"op": "avg_pool2d", "kernel_size": 2}, LAST], set()),  # fused, after the epilogue: a mean of rounded values
    ([{"op": "conv2d", "name": "dw", "out_channels": 4, "kernel_size": 3, "groups": 4}, LAST],
     {"dw"}),  # a depthwise conv multiplies c on the CUDA cores, unrounded; its own output is rounded
    ([{"op": "flatten"}, {"op": "linear", "out_features": 3}], set()),  # read through a reshape, by a linear
    ([{"op": "add", "name": "s", "inputs": ["c", "x"]}, LAST], {"s"}),  # fused into c: the sum is rounded
    ([{"op": "mul", "name": "sq", "inputs": ["c", "c"]}, LAST], {"sq"}),  # an elementwise writer's epilogue rounds
    ([LAST, {"op": "add", "inputs": ["last", "c"]}], set()),  # read as a residual
])
def test_which_tensors_are_stored_rounded(layers, stored):
    spec = net([{"op": "conv2d", "name": "c", "out_channels": 4, "kernel_size": 3, "padding": 1}, *layers], (4, 6, 6))
    g = cnngraph.plan(spec, 2, precision="tf32").graph
    assert {n for n in g if g.nodes[n].get("tf32_stored")} == stored


@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
def test_cnns_are_channels_last_from_the_stem_to_the_global_pool(precision):
    """Every tensor a conv or a pool writes (all but the image and the global pool's (N, C, 1, 1)),
    mobilenet_v2's depthwise convs', squeezenet's concats', densenet's batch norms', cifar_vgg's
    pooled convs' and convnext's layer norms' too, and the squeeze-excitation networks' (their gated
    convs read NHWC), and shufflenet_v2's (its 58-channel halves copied 8 or 4 bytes at a time); at
    fp32 (the CUDA-core kernels) none."""
    for example in ("resnet18", "resnet50", "mobilenet_v2", "squeezenet1_1", "densenet121", "cifar_vgg",
                    "convnext_tiny", "efficientnet_b0", "mobilenet_v3_large", "shufflenet_v2"):
        g = cnngraph.plan(EXAMPLES / f"{example}.json", 1, precision=precision).graph
        spatial = [n for n in g.graph["order"] if len(g.nodes[n]["shape"]) == 4 and g.nodes[n]["shape"][2] > 1]
        nhwc = {n for n in g.graph["order"] if g.nodes[n].get("layout") == "NHWC"}
        assert nhwc - set(spatial) == {n for n in nhwc if g.nodes[n]["shape"][2:] == (1, 1)}  # (layout-free)
        assert set(spatial) <= nhwc, example
        assert cnngraph.plan(EXAMPLES / f"{example}.json", 1).program.layouts == {}


@needs_opencl
@pytest.mark.parametrize("case", sorted(CHANNELS_LAST))
def test_channels_last_tensors_read_back_as_nchw(case):
    """Every node's output, NHWC ones included, downloads in its NCHW shape with the NumPy values;
    the kernels that read an NHWC tensor copy it 16 bytes at a time only, and so do the tensor-core
    convs between tensors of one pixel each (NHWC byte for byte: the squeeze-excitation's)."""
    spec, batch = LAYERS[case]
    ref = cnngraph.compile(spec, batch_size=batch, device="cpu", precision="tf32")
    model = cnngraph.compile(spec, batch_size=batch, device="opencl", weights=ref.weights, precision="tf32")
    xs = inputs_for(ref)
    want = ref.backend.run_observed(dict(xs))
    got = model.backend.run_node_by_node({**xs, **want})
    assert {n: node_rel_err(ref.graph, n, got[n], want[n]) <= 1e-5 for n in want} == {n: True for n in want}
    program = model.backend.program
    for launch in program.launches:
        assert ("CP_ASYNC4(" in launch.body) != reads_nhwc(program, ref.graph, launch), launch.kernel


# a 3-channel image read by a 7x7 stride-2 stem conv alone: stored NHWC, its channels padded with
# zeros to whole 16-byte pixels
STEM = net([{"op": "conv2d", "name": "stem", "out_channels": 16, "kernel_size": 7, "stride": 2, "padding": 3,
             "activation": "relu"},
            {"op": "conv2d", "name": "next", "out_channels": 8, "kernel_size": 3, "padding": 1}], (3, 13, 11))


@needs_opencl
@pytest.mark.parametrize("precision", ["tf32", "fp16", pytest.param("bf16", marks=pytest.mark.slow)])
def test_the_image_is_stored_nhwc_padded_to_whole_vectors(precision):
    ref = cnngraph.compile(STEM, batch_size=3, device="cpu", precision=precision)
    model = cnngraph.compile(STEM, batch_size=3, device="opencl", weights=ref.weights, precision=precision)
    program, padded = model.backend.program, vector_width(precision)  # 4 at tf32, 8 at fp16/bf16
    assert program.layouts == {"x": "NHWC", "stem": "NHWC"} and program.padded_channels == {"x": padded}
    assert program.tensors["x"][1] == 3 * 13 * 11 * padded  # the memory plan counts the padding
    (stem,) = [l for l in program.launches if l.node == "stem"]
    assert stem.kernel.startswith("conv7x7s2") and "_nhwc" in stem.kernel
    assert "CP_ASYNC16" in stem.body and "CP_ASYNC4(" not in stem.body  # 16-byte copies of the padded pixels
    (w,) = [program.constants[ref_] for _, ref_ in stem.args if ref_.endswith(":w")]
    reduction = w.shape[2] if precision == "tf32" else w.shape[1]  # tf32: a row per output channel
    assert reduction == 7 * 7 * padded  # zero weights for the padding
    xs = inputs_for(ref)
    want = ref.backend.run_observed(dict(xs))
    model.backend.poison()  # NaN everywhere: padding left unwritten would spread (NaN * 0)
    got = model.backend.run_node_by_node({**xs, **want})
    errors = {n: node_rel_err(ref.graph, n, got[n], want[n]) for n in want}
    assert max(errors.values()) <= NODE_TOL[precision], errors
    stored = model.backend.stored(xs["x"], name="x")  # how the backends upload it
    assert stored.shape == (3, 13, 11, padded) and not stored[..., 3:].any()
    rounded = xs["x"].copy()
    round_storage(rounded, precision)
    assert np.array_equal(model.backend.loaded(stored, name="x"), rounded)
    row = next(r for r in cnngraph.report.node_rows(model.graph) if r["node"] == "x")
    assert (row["layout"], row["padded_channels"]) == ("NHWC", padded)
    assert f"NHWC (C padded to {padded})" in cnngraph.report.summary_table(model.graph)
    from cnngraph.cli import codegen_manifest

    args = [a for l in codegen_manifest(program, CUDA, 3, precision)["launches"] for a in l["args"]
            if a.get("node") == "x"]
    assert args and all((a["padded_channels"], a["size"]) == (padded, 3 * 13 * 11 * padded) for a in args)


@pytest.mark.parametrize("layers, outputs", [
    ([{"op": "conv2d", "name": "c", "out_channels": 6, "kernel_size": 3, "padding": 1},  # x is c's residual too
      {"op": "add", "name": "s", "inputs": ["c", "x"]}], ["s"]),
    ([{"op": "conv2d", "name": "c", "out_channels": 8, "kernel_size": 3, "groups": 2}], ["c"]),  # padding per group
    ([{"op": "conv2d", "name": "c", "out_channels": 8, "kernel_size": 1},  # another op reads it
      {"op": "max_pool2d", "name": "p", "inputs": ["x"], "kernel_size": 2}], ["c", "p"]),
], ids=["residual", "grouped", "pool"])
def test_an_input_other_kernels_read_stays_nchw(layers, outputs):
    spec = {**net(layers, (6, 8, 8)), "outputs": outputs}
    for precision in ("tf32", "fp16"):
        g = cnngraph.plan(spec, 2, precision=precision).graph
        assert "layout" not in g.nodes["x"] and "padded_channels" not in g.nodes["x"]


# convs whose outputs only convs read, 6 channels (pooled: 5x6) and 10: stored NHWC padded to
# whole 16-byte pixels, the writers storing the zeros (`conv_mma`'s `out_pitch`)
PADDED_CHAIN = (net([
    {"op": "conv2d", "name": "a", "out_channels": 6, "kernel_size": 3, "padding": 1, "activation": "relu"},
    {"op": "max_pool2d", "name": "ap", "kernel_size": 2},
    {"op": "conv2d", "name": "b", "out_channels": 10, "kernel_size": 3, "padding": 1, "stride": 2},
    {"op": "conv2d", "name": "c", "out_channels": 8, "kernel_size": 1}], (8, 10, 12)), 2)
END_TO_END_TOL = {"tf32": 1e-4, "fp16": 1e-3, "bf16": 1e-2}  # a chain's roundings may differ by an ulp here and there


@needs_opencl
@pytest.mark.parametrize("precision", ["tf32", "fp16", pytest.param("bf16", marks=pytest.mark.slow)])
def test_conv_outputs_only_convs_read_are_padded_by_their_writers(precision):
    spec, batch = PADDED_CHAIN
    ref = cnngraph.compile(spec, batch_size=batch, device="cpu", precision=precision)
    model = cnngraph.compile(spec, batch_size=batch, device="opencl", weights=ref.weights, precision=precision)
    program, vector = model.backend.program, vector_width(precision)
    assert program.padded_channels == {"ap": 8, "b": -(-10 // vector) * vector}
    writers = {launch.node: launch for launch in program.launches}
    assert "maxpool" in writers["ap"].kernel and all("a padding channel" in writers[n].body for n in ("ap", "b"))
    xs = inputs_for(ref)
    assert padding_as_written(model.backend, xs) == {"ap": 0, "b": 0}  # nonzero padding values
    got, want = model.backend.run(dict(xs)), ref.backend.run(dict(xs))
    assert np.isfinite(got["c"]).all() and rel_err(got["c"], want["c"]) <= END_TO_END_TOL[precision]


def padding_as_written(backend, xs) -> dict[str, int]:
    """Per padded tensor, how many of its padding channels are not zero right after its writer's
    launches ran on an arena poisoned with NaN (an unwritten one holds NaN or what an earlier
    kernel left there, which the next conv multiplies by its zero weight rows: NaN stays NaN)."""
    program = backend.program
    backend.poison()
    for name, x in xs.items():
        backend._upload(name, x)
    nonzero = {}
    for index, launch in enumerate(program.launches):
        backend._launch_one(index)
        if launch.node in program.padded_channels:
            raw = np.empty(backend.arena_shape(launch.node), np.uint16 if backend.half else np.float32)
            backend.cl.enqueue_copy(backend.queue, raw, backend.views[launch.node])
            nonzero[launch.node] = int(np.count_nonzero(raw[..., backend.tensor_shape(launch.node)[1]:]))
    return nonzero


@needs_opencl
@pytest.mark.parametrize("old, new, node", [
    ("kl < 12) {", "kl < 10) {", "b"),  # b's zeros not stored
    (re.compile(r"\n *else if [^\n]*a padding channel \*/"), "", "ap"),  # the pooled conv's
], ids=["conv", "pooled_conv"])
def test_emulation_catches_unwritten_padding(old, new, node):
    spec, batch = PADDED_CHAIN
    _, backend = planted(spec, batch, old, new)
    assert padding_as_written(backend, inputs_for(cnngraph.compile(spec, batch_size=batch)))[node] > 0


def planted(spec, batch, old, new):
    """The OpenCL model of `spec` at tf32 with one mistake planted in its tensor-core kernels: `old`
    (a string, or a compiled pattern) replaced by `new` wherever it occurs (in one kernel at least)."""
    p = cnngraph.plan(spec, batch, precision="tf32")
    program = copy.deepcopy(p.program)
    pattern = old if isinstance(old, re.Pattern) else re.compile(re.escape(old))
    total = 0
    for launch in program.launches:
        if "MMA_TF32(" in launch.body:
            launch.body, count = pattern.subn(new, launch.body)
            total += count
    assert total
    return p, OpenCLBackend(p, program=program)


@needs_opencl
@pytest.mark.parametrize("old, new", [
    (re.compile(r"(a\[i\]\[1\] = .*?\[row) \+ 8\]"), r"\1]"),  # a1 read from row g instead of g + 8
    (re.compile(r"(b\[j\]\[1\] = Bs\[[^]]*\]\[kk \+ ft) \+ 4\]"), r"\1]"),  # b1 read from k t instead of t + 4
    (re.compile(r"= TF32_OPERAND\((As\[read\][^;]*)\);"), r"= \1;"),  # landed inputs unrounded: truncated
    ("const int kl = n0 + wn0 + j * 8 + 2 * ft + e % 2;", "const int kl = n0 + wn0 + j * 8 + ft + e % 2;"),
    (re.compile(r"CP_ASYNC_WAIT\((\d+)\)"), lambda m: f"CP_ASYNC_WAIT({int(m[1]) + 1})"),  # a wait too weak
    ("CP_ASYNC_COMMIT();  /* every", "/* every"),  # copies never committed: their wait never completes them
    (re.compile(r"(SHARED_VIEW\(float, Bs, [^;]*, )\d+\);"), r"\g<1>0);"),  # Bs carved over As
    ("CP_ASYNC16(", "CP_ASYNC4("),  # 4 of a weight copy's 16 bytes
], ids=["fragment_row", "fragment_k", "unrounded_input", "accumulator_column", "weak_wait", "missing_commit",
        "overlapping_views", "short_weight_copy"])
def test_emulation_catches_planted_mistakes(old, new):
    assert_caught(LAYERS["conv_stride2_ragged"], old, new)  # three stages, several slices


@needs_opencl
@pytest.mark.parametrize("old, new", [
    (re.compile(r"lanes < (\d+);"), lambda m: f"lanes < {int(m[1]) // 2};"),  # half of each window pooled
    ("SHFL_XOR(v, lanes)", "SHFL_XOR(v, lanes / 4)"),  # the neighbouring channels' lanes instead
    ("+ a_win / 2;", ";"),  # every row of a window copies the window's first pixel row
], ids=["half_window", "wrong_lanes", "window_rows"])
def test_emulation_catches_planted_pool_mistakes(old, new):
    assert_caught(LAYERS["pooled_conv"], old, new)


@needs_opencl
def test_emulation_catches_an_nchw_tensor_stored_unrounded():
    assert_caught(LAYERS["rounded_nchw"], ROUNDED_STORE, "")


@needs_opencl
@pytest.mark.parametrize("old, new", [
    (re.compile(r"SCALE_TF32X4\([^;]*\);"), ";"),  # the landed copies left ungated (and unrounded)
    ("gate + a_gate[i] + c)", "gate + a_gate[i])"),  # every vector scaled by channels 0-3's gates
    ("const int c = r < r_end ? taps[r].w : 0;", "const int c = r < r_end ? taps[r].x : 0;"),  # not the channel
], ids=["ungated", "gates_of_the_first_channels", "gate_of_the_offset"])
def test_emulation_catches_planted_nhwc_gate_mistakes(old, new):
    assert_caught(LAYERS["channels_last_gated"], old, new)


def assert_caught(case, old, new):
    spec, batch = case
    p, backend = planted(spec, batch, old, new)
    ref = cnngraph.compile(spec, batch_size=batch, device="cpu", precision="tf32")
    xs = inputs_for(ref)
    backend.poison()
    got, want = backend.run(xs), ref.backend.run(dict(xs))
    assert not all(np.isfinite(got[n]).all() and rel_err(got[n], want[n]) <= 1e-5 for n in want)


@needs_opencl
@pytest.mark.parametrize("old, new", [
    (re.compile(r"const int idx = m \* (\d+) \+ k;"),  # an NHWC output stored NCHW
     lambda m: f"const int idx = (m / 90 * {m[1]} + k) * 90 + m % 90;"),
    (re.compile(r"\]\[tid % (\d+) \* 4\], x \+ a_off"), r"][tid % \1], x + a_off"),  # input copies overlap
    ("a_h[i] = am < ", "a_h[i] = am + 16 < "),  # the last pixels' windows left unread
    ("lane % 8 + 8 * (lane / 8 % 2)", "lane % 8"),  # ldmatrix: a1 and a3 from rows g instead of g + 8
    ("* 20 + kk + 4 * (lane / 16)", "* 20 + kk"),  # ldmatrix: a2 and a3 from columns t instead of t + 4
    (re.compile(r"ROUND_TF32X4\([^;]*\);"), ";"),  # landed copies not rounded: the tensor cores truncate them
    (ROUNDED_STORE, ""),  # b and r stored unrounded, and their readers do not round them either
    ("kk + 4 * (lane / 8 % 2)", "kk"),  # ldmatrix of channel-major weights: b1 from k t instead of t + 4
    ("lane % 8 + 8 * (lane / 16))", "lane % 8)"),  # and a fragment's neighbour from its own channels
], ids=["nchw_store", "overlapping_input_copies", "pixels_left_out", "ldmatrix_row", "ldmatrix_column",
        "unrounded_copies", "stored_unrounded", "b_ldmatrix_k", "b_ldmatrix_channels"])
def test_emulation_catches_planted_channels_last_mistakes(old, new):
    assert_caught(LAYERS["channels_last_block"], old, new)


ABOVE_48_KB = ["mma_large_4", "mma_wide32"]  # NCHW, in CI; the other tiles under -m slow (a PoCL build each)
ALL_TILES = {**MMA_TILES, **MMA_DEEP_TILES}


# conv_stride2_ragged's conv (72 channels: every tile is a candidate) between two 1x1 convs, so
# that it reads and writes NHWC (24 channels in: a multiple of 8, NHWC at fp16 too); it reads a
# pool's output, which it rounds to TF32 as it lands (a conv's only reader is a conv: stored rounded)
TILE_CASES = {"NCHW": (LAYERS["conv_stride2_ragged"], "c"), "NHWC": ((net([
    {"op": "conv2d", "name": "in", "out_channels": 24, "kernel_size": 1},
    {"op": "max_pool2d", "name": "pool", "kernel_size": 3, "stride": 1, "padding": 1},
    {"op": "conv2d", "name": "mid", "out_channels": 72, "kernel_size": 3, "stride": 2, "padding": [1, 0, 2, 1]},
    {"op": "conv2d", "name": "out", "out_channels": 8, "kernel_size": 1}], (13, 11, 9)), 3), "mid")}
# the tiles' cp.async pipelines: TF32 on both layouts, 16-bit on NHWC (NCHW 16-bit loads through registers)
TILE_LAYOUTS = {"tf32": ["NCHW", "NHWC"], "fp16": ["NHWC"]}


def tile_programs(layout, precision="tf32"):
    """The NumPy model of `TILE_CASES[layout]` at `precision`, and its program with each candidate
    schedule of the conv under test, with that conv's launch."""
    from cnngraph.codegen.lower import lower, lower_node

    (spec, batch), node = TILE_CASES[layout]
    ref = cnngraph.compile(spec, batch_size=batch, device="cpu", precision=precision)
    programs = [lower(ref.graph, {node: pick}) for pick in range(lower_node(ref.graph, node, {}, 0)[0].schedules)]
    return ref, [(p, next(l for l in p.launches if l.node == node)) for p in programs]


IN_CI = {("mma_large_4", "NCHW", "tf32"), ("mma_wide32", "NCHW", "tf32"), ("mma_large_4", "NHWC", "tf32"),
         ("mma_narrow", "NHWC", "fp16")}  # PoCL builds take minutes


@needs_opencl
@pytest.mark.parametrize("name, layout, precision", [
    case if case in IN_CI else pytest.param(*case, marks=pytest.mark.slow)
    for precision, layouts in TILE_LAYOUTS.items()
    for case in itertools.product(sorted(ALL_TILES), layouts, [precision])])
def test_every_tensor_core_tile_computes_the_same(name, layout, precision):
    """Each tile and stage count an autotuner may pick, those whose buffers take more than the 48 KB
    a block may declare statically included (carved from dynamic shared memory, sized at launch),
    on NCHW tensors and on NHWC ones, each kernel on the NumPy emulation's own inputs."""
    ref, programs = tile_programs(layout, precision)
    tile = ALL_TILES[name]
    program, launch = next((p, l) for p, l in programs if l.schedule.tile == tile)
    size = tile.shared_bytes(layout == "NHWC", half=precision != "tf32")
    assert launch.shared_bytes == size and f"DYNAMIC_SHARED({size})" in launch.body
    assert layout == "NHWC" or (size > 48 * 1024) == (name in ABOVE_48_KB or name in ("mma_large", "mma_small32"))
    assert ("_nhwc" in launch.kernel) == (layout == "NHWC")
    backend = OpenCLBackend(ref.plan, {}, program)
    backend.poison()
    xs = inputs_for(ref)
    want = ref.backend.run_observed(dict(xs))
    got = backend.run_node_by_node({**xs, **want})
    assert all(node_rel_err(ref.graph, n, got[n], want[n]) <= NODE_TOL[precision] for n in want)


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_kernel_names_and_summary_show_the_precision(case):
    spec, batch = LAYERS[case]
    p = cnngraph.plan(spec, batch, precision="tf32")
    model = cnngraph.bind(p, "cpu")
    assert model.precision == "tf32" and "precision=tf32" in repr(model)
    assert "tf32" in model.summary()
    gemm_nodes = [n for n in p.graph.graph["order"] if p.graph.nodes[n]["compute"].spec.runs_as_gemm(
        [p.graph.nodes[i]["shape"][1:] for i in p.graph.nodes[n]["inputs"]])]
    assert gemm_nodes and all(p.graph.nodes[n]["compute"].precision == "tf32" for n in gemm_nodes)


def test_depthwise_stays_fp32():
    spec = net([{"op": "conv2d", "out_channels": 8, "kernel_size": 3, "groups": 8, "padding": 1},
                {"op": "conv2d", "out_channels": 4, "kernel_size": 1}], (8, 5, 5))
    p = cnngraph.plan(spec, 1, precision="tf32")
    precisions = {n: p.graph.nodes[n]["compute"].precision for n in p.graph.graph["order"]}
    assert precisions == {"conv2d_0": "fp32", "conv2d_1": "tf32"}


@pytest.mark.parametrize("bad", ["fp64", "TF32", "", None, 32, ["tf32"]])
def test_unknown_precision_is_one_clear_error(bad):
    spec, _ = LAYERS["linear"]
    for call in (lambda: cnngraph.compile(spec, device="cpu", precision=bad),
                 lambda: cnngraph.plan(spec, precision=bad)):
        with pytest.raises(SpecError, match="precision .*valid: fp32, tf32"):
            call()


def test_cli_precision(tmp_path):
    spec, _ = LAYERS["conv3x3_pad"]
    path = tmp_path / "net.json"
    path.write_text(json.dumps(spec))
    cli = [sys.executable, "-m", "cnngraph.cli"]
    run = subprocess.run([*cli, "run", str(path), "--device", "cpu", "--precision", "tf32"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    inspect = subprocess.run([*cli, "inspect", str(path), "--precision", "tf32"], capture_output=True, text=True)
    assert inspect.returncode == 0 and "tf32" in inspect.stdout
    out = tmp_path / "kernels"
    codegen = subprocess.run([*cli, "codegen", str(path), "-o", str(out), "--precision", "tf32"], capture_output=True,
                             text=True)
    assert codegen.returncode == 0, codegen.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "tf32"
    assert any("_tf32" in f.name for f in out.iterdir())
    (conv,) = manifest["launches"]  # the tensor-core kernel carves its buffers from dynamic shared memory
    assert conv["shared_bytes"] > 0 and f"DYNAMIC_SHARED({conv['shared_bytes']})" in (out / conv["file"]).read_text()
    chain = tmp_path / "chain.json"  # the tensor between two tensor-core convs is stored NHWC
    chain.write_text(json.dumps(LAYERS["channels_last_split_k"][0]))
    inspect = subprocess.run([*cli, "inspect", str(chain), "--precision", "tf32", "--format", "json"],
                             capture_output=True, text=True)
    assert {n["node"]: n["layout"] for n in json.loads(inspect.stdout)["nodes"]} == {"x": "NHWC", "a": "NHWC",
                                                                                     "b": "NCHW"}
    out = tmp_path / "chain_kernels"
    codegen = subprocess.run([*cli, "codegen", str(chain), "-o", str(out), "--precision", "tf32"], capture_output=True,
                             text=True)
    assert codegen.returncode == 0, codegen.stderr
    launches = json.loads((out / "manifest.json").read_text())["launches"]
    assert [[a["layout"] for a in l["args"] if a["kind"] == "tensor"] for l in launches] == [["NHWC", "NHWC"],
                                                                                              ["NHWC", "NCHW"]]
    bad = subprocess.run([*cli, "run", str(path), "--device", "cpu", "--precision", "fp64"], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "fp32, tf32" in bad.stderr


# --- NVRTC and SASS (no GPU needed) ---------------------------------------------------------------

# cp.async of 4, 8 or 16 bytes (of float32 or 16-bit values) as SASS spells it
COPY_SASS = {"CP_ASYNC4": "LDGSTS.E", "CP_ASYNC8": "LDGSTS.E.64", "CP_ASYNC16": "LDGSTS.E.BYPASS.128"}


SHARED_PER_SM = {"sm_80": 164 * 1024, "sm_90": 228 * 1024}  # A100, H100/H200; each block also takes 1 KB


def copies_in_sass(body: str) -> set[str]:
    """The LDGSTS instructions a kernel's async copies compile to."""
    return {op for word, op in COPY_SASS.items() if re.search(rf"\b{word}(_HALF)?\(", body)}



@pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))
@pytest.mark.parametrize("example, batch", [("resnet18", 64), ("resnet18", 1), ("mobilenet_v2", 8), ("cifar_vgg", 64),
                                            ("mobilenet_v3_large", 8),  # gated convs reading NHWC
                                            ("convnext_tiny", 2),  # layer norms of NHWC pixels, by warps
                                            ("shufflenet_v2", 8)])  # NHWC halves of 58 channels: 8-byte copies
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_tensor_core_kernels_compile_to_hmma_without_stack(example, batch, arch):
    """Every tensor-core kernel: HMMA, cp.async (where it reads NHWC, 16-byte copies, or 8-byte ones
    of channels that are not whole 16-byte vectors, and A fragments by ldmatrix in the main loop), no
    stack, two blocks' registers per SM; a fused pool's windows combined by butterfly shuffles, and
    an NHWC layer norm's sums."""
    from cnngraph.codegen.nvrtc import compile_cuda, disassemble, main_loop, sass

    try:
        sass('extern "C" __global__ void k() {}', arch)
    except DeviceError as err:
        pytest.skip(str(err))
    p = cnngraph.plan(EXAMPLES / f"{example}.json", batch, precision="tf32")
    source = p.program.source(CUDA)
    reports, code = compile_cuda(source, arch), disassemble(source, arch)
    opcodes = {kernel: [i.opcode for i in instructions] for kernel, instructions in code.items()}
    launches = [l for l in p.program.launches if "MMA_TF32(" in l.body]
    mma = [l.kernel for l in launches]
    assert mma
    for launch in launches:
        kernel, r = launch.kernel, reports[launch.kernel]
        assert (r.stack_bytes, r.spill_stores, r.spill_loads) == (0, 0, 0), r
        assert 2 * launch.block[0] * r.registers <= 65536, r  # two blocks fit one SM's registers
        assert 2 * (launch.shared_bytes + 1024) <= SHARED_PER_SM[arch], launch.schedule  # and its shared memory
        assert any(op.startswith("HMMA.1688.F32.TF32") for op in opcodes[kernel]), kernel
        copies = {op for op in opcodes[kernel] if op.startswith("LDGSTS")}
        assert copies and copies == copies_in_sass(launch.body), kernel  # cp.async
        if "_nhwc" in kernel and "_nhwc_out" not in kernel:  # an NHWC input: 16 bytes, 8 of 58 channels
            channels = stored_shape(p.graph, p.graph.nodes[launch.node]["inputs"][0])[1]
            assert copies == {"LDGSTS.E.BYPASS.128", *(["LDGSTS.E.64"] if channels % 4 else [])}, kernel
            assert "LDSM.16.M88.4" in {i.opcode for i in main_loop(code[kernel])}, kernel
        compute = compute_of(p.graph, launch.node)
        per_group = p.graph.nodes[launch.node]["shape"][1] // getattr(compute.spec, "groups", 1)
        pairs = "_nhwc" in kernel and "_nhwc_in" not in kernel and not compute.pool and per_group % 2 == 0
        assert ("STORE_PAIR(" in launch.body) == pairs, kernel  # an NHWC output: two channels, one 8-byte store
        assert not pairs or "STG.E.64" in opcodes[kernel], kernel
        assert ("SHFL.BFLY" in opcodes[kernel]) == ("pool" in kernel), kernel
    assert any("_nhwc" in kernel for kernel in mma)
    assert any("pool" in kernel for kernel in mma) == (example == "cifar_vgg")
    assert all("_nhwc" in kernel for kernel in mma if kernel.startswith("gated"))
    norms = [l.kernel for l in p.program.launches if l.kernel.startswith("layernorm") and "_nhwc" in l.kernel]
    assert all("SHFL.BFLY" in opcodes[kernel] for kernel in norms) and bool(norms) == (example == "convnext_tiny")
    # a tensor stored rounded: its writer's epilogue rounds it, cvt.rna (ptxas adds half a TF32 ulp where
    # the value is finite and clears the 13 low bits: FSETP, IADD3, LOP3), depthwise writers included
    stored = [l.kernel for l in p.program.launches if ROUNDED_STORE in l.body]
    assert stored and all({"FSETP.GEU.AND", "IADD3", "LOP3.LUT"} <= set(opcodes[k]) for k in stored)


@pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_tensor_core_tile_compiles_and_two_blocks_fit_an_sm(arch):
    """Every tile and stage count an autotuner may pick, at tf32 and (NHWC) fp16: HMMA and LDGSTS (and
    the plain LDSM of the 16-bit A fragments), no stack or spills, and two blocks fit an SM's
    registers and shared memory, static and dynamic (the carved buffers)."""
    from cnngraph.codegen.nvrtc import compile_cuda, sass

    try:
        sass('extern "C" __global__ void k() {}', arch)
    except DeviceError as err:
        pytest.skip(str(err))
    for precision, layouts in TILE_LAYOUTS.items():
        launches = [launch for layout in layouts for _, launch in tile_programs(layout, precision)[1]]
        for pick, launch in enumerate(launches):
            launch.rename(f"{launch.kernel}_s{pick}")
        for layout in layouts:
            assert {l.schedule.tile for l in launches if l.node == TILE_CASES[layout][1]} == set(ALL_TILES.values())
        source = CUDA.render("\n".join(l.body for l in launches), storage=precision)
        reports, opcodes = compile_cuda(source, arch), sass(source, arch)
        hmma, half = ("HMMA.1688.F32.TF32", False) if precision == "tf32" else ("HMMA.16816.F32", True)
        for launch in launches:
            r, ops = reports[launch.kernel], opcodes[launch.kernel]
            nhwc = "_nhwc" in launch.kernel
            assert (r.stack_bytes, r.spill_stores, r.spill_loads) == (0, 0, 0), r
            assert any(op.startswith(hmma) for op in ops) and "LDGSTS.E.BYPASS.128" in ops
            assert not nhwc or {op for op in ops if op.startswith("LDGSTS")} == {"LDGSTS.E.BYPASS.128"}, ops
            assert not half or any(op.startswith("LDSM.16.M88.4") for op in ops)  # A, by plain ldmatrix
            size = launch.schedule.tile.shared_bytes(nhwc, half=half)
            assert r.shared_bytes == 0 and launch.shared_bytes == size  # all dynamic
            assert 2 * launch.block[0] * r.registers <= 65536, (launch.schedule, r)
            assert 2 * (launch.shared_bytes + 1024) <= SHARED_PER_SM[arch], launch.schedule


# the examples the tests above compile: the others, in CI where their compile is quick
COMPILED_ABOVE = {"resnet18", "mobilenet_v2", "cifar_vgg", "mobilenet_v3_large", "convnext_tiny", "shufflenet_v2"}
QUICK_TO_COMPILE = {"lenet5", "squeezenet1_1", "unet_small"}


@pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))
@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
@pytest.mark.parametrize("example", [
    name if name in QUICK_TO_COMPILE else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(p.stem for p in EXAMPLES.glob("*.json")) if name not in COMPILED_ABOVE])
def test_every_example_compiles_to_tensor_core_kernels(example, precision):
    """The examples the tests above leave out, at sm_80: no stack, no spills, the precision's HMMA
    in every tensor-core kernel, and two blocks of each fit an SM."""
    from cnngraph.codegen.nvrtc import compile_cuda, sass

    try:
        sass('extern "C" __global__ void k() {}', "sm_80")
    except DeviceError as err:
        pytest.skip(str(err))
    p = cnngraph.plan(EXAMPLES / f"{example}.json", 2, precision=precision)
    source = p.program.source(CUDA)
    reports, opcodes = compile_cuda(source, "sm_80"), sass(source, "sm_80")
    hmma = {"tf32": "HMMA.1688.F32.TF32", "fp16": "HMMA.16816.F32", "bf16": "HMMA.16816.F32.BF16"}[precision]
    mma = {launch.kernel for launch in p.program.launches if "MMA_" in launch.body}
    assert mma
    for launch in p.program.launches:
        r = reports[launch.kernel]
        assert (r.stack_bytes, r.spill_stores, r.spill_loads) == (0, 0, 0), (launch.kernel, r)
        assert 2 * launch.block[0] * r.registers <= 65536, (launch.kernel, r)
        assert 2 * (r.shared_bytes + launch.shared_bytes + 1024) <= SHARED_PER_SM["sm_80"], launch.kernel
        assert (launch.kernel in mma) == (hmma in opcodes[launch.kernel]), launch.kernel


# --- on a GPU ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(LAYERS))
@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_cuda)])
def test_cuda_tf32_layers_match_numpy_tf32(case, _):
    spec, batch = LAYERS[case]
    ref = cnngraph.compile(spec, batch_size=batch, device="cpu", precision="tf32")
    model = cnngraph.compile(spec, batch_size=batch, device="cuda", weights=ref.weights, precision="tf32")
    xs = inputs_for(ref)
    for _ in range(3):  # plain, captured, replayed
        assert rel_err(run_poisoned(model, xs), ref(xs)) <= 1e-5


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_cuda)])
def test_cuda_every_tensor_core_tile(_):
    """Every tile on the GPU, at tf32 and (NHWC) fp16: the ones above 48 KB need the kernel's dynamic
    shared memory raised before their launch, which CUDA refuses otherwise."""
    from cnngraph.backends.cuda_backend import CudaBackend

    for precision, layouts in TILE_LAYOUTS.items():
        for layout in layouts:
            ref, programs = tile_programs(layout, precision)
            assert precision != "tf32" or max(l.shared_bytes for _, l in programs) > 48 * 1024
            xs = inputs_for(ref)
            want = ref.backend.run_observed(dict(xs))
            for program, launch in programs:
                backend = CudaBackend(ref.plan, {"cuda_graph": False}, program)
                backend.poison()
                got = backend.run_node_by_node({**xs, **want})
                errors = {n: node_rel_err(ref.graph, n, got[n], want[n]) for n in want}
                assert max(errors.values()) <= NODE_TOL[precision], (layout, launch.schedule)


# Whole networks with their seeded random weights. TF32 error grows with a network's sensitivity,
# which its fp32 error shows: the examples below are within 1e-3 of float64 at tf32 (fp32: <= 2e-6).
# The two MobileNets amplify rounding about 20x more (fp32 6.5e-6 and 5.3e-5 of float64; tf32 1.7e-2
# and 8e-2, the same on every backend), so they are checked per layer, not against the budget.
# The four larger ones (reduced size; tf32 / fp16 / bf16 measured): convnext_tiny 9.6e-4 / 1.4e-3 /
# 1.1e-2, densenet121 5.4e-4 / 6.5e-4 / 5.1e-3, efficientnet_b0 4.7e-4 / 5.8e-4 / 5.1e-3, resnet50
# 7.8e-4 / 8.8e-4 / 6.6e-3.
WELL_CONDITIONED = ["cifar_vgg", "convnext_tiny", "densenet121", "efficientnet_b0", "lenet5", "resnet18", "resnet50",
                    "shufflenet_v2", "squeezenet1_1", "unet_small"]


def example_against_float64(example, device):
    """(output at tf32 on `device`, the NumPy backend's at tf32, float64 PyTorch's), reduced size."""
    from torch_oracle import run_spec

    spec = reduced_example(example)
    ref = cnngraph.compile(spec, batch_size=2, device="cpu", precision="tf32")
    model = cnngraph.compile(spec, batch_size=2, device=device, weights=ref.weights, precision="tf32")
    xs = inputs_for(ref)
    want = next(iter(run_spec(spec, {k: v.astype(np.float64) for k, v in ref.weights.items()},
                              {k: v.astype(np.float64) for k, v in xs.items()}).values()))
    return run_poisoned(model, xs), ref(xs), want


@pytest.mark.parametrize("example", WELL_CONDITIONED)
def test_numpy_tf32_examples_within_the_budget(example):
    got, _, want = example_against_float64(example, "cpu")
    assert rel_err(got, want) <= 5e-3


@pytest.mark.parametrize("example", ["resnet18", "cifar_vgg", "shufflenet_v2", "squeezenet1_1"])
@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_cuda)])
def test_cuda_tf32_examples(example, _):
    """Against float64 within TF32's budget, and near the NumPy emulation (not bit-close: a value
    summed in another order can round to the neighbouring TF32 value in the next layer)."""
    got, emulated, want = example_against_float64(example, "cuda")
    assert rel_err(got, want) <= 5e-3
    assert rel_err(got, emulated) <= 2e-3
