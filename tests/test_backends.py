"""The generated kernels against the NumPy backend: on OpenCL (PoCL on the CPU, in CI) and on CUDA
(tests marked `gpu`, skipped without one). Arenas are NaN-poisoned before every run, so an element
no kernel writes fails the comparison. Plus the NVRTC compile check (no GPU needed)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

import cnngraph
from cnngraph.backends.cuda_backend import cuda_unavailable_reason
from cnngraph.codegen.dialects import CUDA
from cnngraph.codegen.lower import lower

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# per-sample input sizes small enough for PoCL; every example's structure is kept
REDUCED = {"lenet5": None, "cifar_vgg": None, "unet_small": [3, 40, 24], "resnet18": [3, 64, 64],
           "mobilenet_v2": [3, 64, 64], "squeezenet1_1": [3, 67, 67], "mobilenet_v3_large": [3, 64, 64],
           "efficientnet_b0": [3, 64, 64], "shufflenet_v2": [3, 64, 64], "densenet121": [3, 64, 64],
           "convnext_tiny": [3, 64, 64], "resnet50": [3, 64, 64]}

# hundreds of kernels each: minutes of PoCL and NVRTC compiling on 2 cores, so `-m slow` runs them
# (their ops run on every backend through the registry tests and the smaller zoo examples)
SLOW = {"densenet121", "efficientnet_b0", "convnext_tiny", "resnet50"}
REDUCED_EXAMPLES = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in sorted(REDUCED)]

CUDA_REASON = cuda_unavailable_reason()


def _opencl_reason():
    try:
        import pyopencl as cl
        cl.create_some_context(interactive=False)
    except Exception as err:  # no pyopencl, no platform, no device
        return f"no OpenCL device: {err}"
    return None


OPENCL_REASON = _opencl_reason()
BACKENDS = [
    pytest.param("opencl", marks=pytest.mark.skipif(OPENCL_REASON is not None, reason=str(OPENCL_REASON))),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(CUDA_REASON is not None, reason=str(CUDA_REASON))]),
]


def rel_err(a, b) -> float:
    """Relative L2 error of `a` against `b`; absolute where `b` is all zeros (a ReLU of negatives),
    so that a wrong value there still counts instead of 0 / 0 = NaN slipping past `<=`."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / (np.linalg.norm(b) or 1.0))


def node_rel_err(g, node: str, got, want) -> float:
    """`rel_err` of one node's output. A tensor stored rounded to TF32 (`tf32_stored`) may hold the
    neighbouring TF32 value here and there: the float32 sum before the rounding is taken in
    another order by the kernel and by NumPy. Values one TF32 step apart (2^-10 of the value at
    most) count as equal; anything further counts in full."""
    if g.nodes[node].get("tf32_stored"):
        got = np.where(np.abs(got - want) <= np.abs(want) * 2.0 ** -10, want, got)
    return rel_err(got, want)


def check_against_numpy(spec, device, batch=2, tol=1e-4, seed=0, precision="fp32"):
    """`device` against the NumPy backend at the same precision (which rounds as the GPU does)."""
    ref = cnngraph.compile(spec, batch_size=batch, device="cpu", precision=precision)
    model = cnngraph.compile(spec, batch_size=batch, device=device, weights=ref.weights, precision=precision)
    rng = np.random.default_rng(seed)
    xs = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in model.input_shapes.items()}
    for _ in range(3):  # the CUDA backend captures a graph on the second call and replays it on the third
        model.backend.poison()
        got, want = model(dict(xs)), ref(dict(xs))
        got = got if isinstance(got, dict) else {"out": got}
        want = want if isinstance(want, dict) else {"out": want}
        for name in want:
            got_np = got[name].get() if hasattr(got[name], "get") else got[name]
            assert np.isfinite(got_np).all(), f"{name}: unwritten (NaN) elements"
            assert rel_err(got_np, want[name]) < tol, f"{name}: relative error {rel_err(got_np, want[name])}"
    return model


def node_errors(spec, device, batch=2, precision="fp32", seed=0) -> dict[str, float]:
    """Per computed node: the relative error of `device` against the NumPy backend at `precision`
    when the node's kernels read the NumPy backend's own values of its inputs. At a reduced
    precision the end-to-end outputs may drift apart by rounding: a sum taken in another order
    lands on the other side of a rounding boundary, and networks amplify that, so each kernel is
    compared on the same inputs instead."""
    ref = cnngraph.compile(spec, batch_size=batch, device="cpu", precision=precision)
    model = cnngraph.compile(spec, batch_size=batch, device=device, weights=ref.weights, precision=precision)
    rng = np.random.default_rng(seed)
    xs = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in model.input_shapes.items()}
    want = ref.backend.run_observed(dict(xs))
    model.backend.poison()
    got = model.backend.run_node_by_node({**xs, **want})
    assert set(got) == set(want)
    for node in want:
        assert np.isfinite(got[node]).all() == np.isfinite(want[node]).all(), f"{node}: unwritten (NaN) elements?"
    return {node: node_rel_err(ref.graph, node, got[node], want[node]) for node in want}


def example(name: str) -> dict:
    spec = json.loads((EXAMPLES / f"{name}.json").read_text())
    if REDUCED[name]:
        spec["inputs"][0]["shape"] = REDUCED[name]
        spec.pop("preprocess", None)  # it makes 224x224 images
    return spec


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("name", REDUCED_EXAMPLES)
def test_example_networks(name, device):
    check_against_numpy(example(name), device, batch=3 if name in ("lenet5", "squeezenet1_1") else 2)


# Reduced precisions, per node on the NumPy backend's own inputs (see `node_errors`): the largest
# measured relative error of a node on the examples is 3e-5 at fp16 (a float32 sum taken in
# another order rounds to the neighbouring 16-bit value now and then).
NODE_TOL = {"tf32": 1e-5, "fp16": 1e-4, "bf16": 1e-3}
# PoCL builds the emulated tensor-core kernels slowly (minutes for a zoo network): CI runs lenet5,
# cifar_vgg and resnet18 at fp16 and resnet18 at bf16 (tf32's kernels: test_precision.py), `-m slow`
# every example at every reduced precision
IN_CI = {"fp16": {"lenet5", "cifar_vgg", "resnet18"}, "bf16": {"resnet18"}, "tf32": set()}
PRECISION_EXAMPLES = [(name, precision) if name in IN_CI[precision]
                      else pytest.param(name, precision, marks=pytest.mark.slow)
                      for precision in NODE_TOL for name in sorted(REDUCED)]


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("name, precision", PRECISION_EXAMPLES)
def test_example_networks_node_by_node(name, precision, device):
    errors = node_errors(example(name), device, batch=2, precision=precision)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= NODE_TOL[precision], f"{worst}: relative error {errors[worst]:.2e}"


def net(layers, shape=(5, 11, 13), **extra):
    return {"format_version": 1, "name": "t", "inputs": [{"name": "x", "shape": list(shape)}], "layers": layers, **extra}


CONV = {"op": "conv2d", "out_channels": 7, "kernel_size": 3}
SINGLE_OPS = {
    "conv3x3_pad": net([{**CONV, "padding": 1, "activation": "relu"}]),
    "conv5x5_s2_nobias": net([{**CONV, "kernel_size": 5, "stride": 2, "bias": False, "activation": "relu6"}]),
    "conv_rect_same_dil": net([{**CONV, "kernel_size": [3, 2], "padding": "same", "dilation": [2, 1],
                                "activation": {"op": "leaky_relu", "negative_slope": 0.2}}]),
    "conv_groups": net([{**CONV, "out_channels": 6, "groups": 2, "activation": "silu"}], shape=(4, 9, 10)),
    "conv_depthwise_s2": net([{**CONV, "out_channels": 5, "groups": 5, "stride": 2, "padding": 1,
                               "activation": "hardswish"}]),
    "conv1x1_many": net([{**CONV, "kernel_size": 1, "out_channels": 131, "activation": "gelu"}], shape=(67, 9, 7)),
    "conv_big_k": net([{**CONV, "out_channels": 150, "padding": 1}], shape=(33, 23, 21)),
    "linear": net([{"op": "flatten"}, {"op": "linear", "out_features": 37, "activation": {"op": "gelu", "approximate": "tanh"}}]),
    "batch_norm_unfolded": net([{**CONV, "name": "c"}, {"op": "batch_norm2d", "name": "bn"},
                                {"op": "add", "inputs": ["c", "bn"]}]),
    "activations": net([{"op": a, "name": a, "inputs": ["x"]} for a in
                        ("relu", "relu6", "leaky_relu", "sigmoid", "tanh", "gelu", "silu", "hardswish")] +
                       [{"op": "add", "inputs": ["relu", "relu6", "leaky_relu", "sigmoid", "tanh", "gelu", "silu",
                                                 "hardswish"]}]),
    "max_pool_ceil": net([{"op": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}]),
    "avg_pool_no_pad_count": net([{"op": "avg_pool2d", "kernel_size": [2, 3], "stride": [2, 1], "padding": 1,
                                   "ceil_mode": True, "count_include_pad": False}]),
    "avg_pool_pad_count": net([{"op": "avg_pool2d", "kernel_size": 3, "padding": 1}]),
    "global_pool_softmax": net([{"op": "global_avg_pool2d"}, {"op": "flatten"}, {"op": "softmax"}]),
    "softmax_axes": net([{"op": "softmax", "axis": 2, "name": "s2", "inputs": ["x"]},
                         {"op": "softmax", "axis": -1, "name": "s3", "inputs": ["x"]},
                         {"op": "softmax", "name": "s1", "inputs": ["x"]}], outputs=["s1", "s2", "s3"]),
    "concat_upsample": net([{**CONV, "name": "a", "padding": 1}, {"op": "upsample2d", "scale_factor": [2, 3], "name": "u"},
                            {"op": "upsample2d", "scale_factor": [2, 3], "name": "ux", "inputs": ["x"]},
                            {"op": "concat", "inputs": ["u", "ux", "u"]}]),
    "dropout_output": net([{"op": "dropout", "p": 0.3}]),
    "conv_relu_batch_norm_epilogue": net([{**CONV, "padding": 1}, {"op": "relu"}, {"op": "batch_norm2d"},
                                          {"op": "max_pool2d", "kernel_size": 2}], shape=(5, 12, 15)),
    "pre_activation_block": net([{"op": "batch_norm2d", "name": "bn0"}, {"op": "relu"}, {"op": "batch_norm2d", "name": "b1"},
                                 {**CONV, "out_channels": 5, "padding": 1, "name": "c"},
                                 {"op": "add", "inputs": ["c", "b1"]}, {"op": "batch_norm2d"}, {"op": "silu"},
                                 {"op": "batch_norm2d"}, {"op": "avg_pool2d", "kernel_size": 2}], shape=(5, 12, 14)),
    "conv_maxpool_fused": net([{**CONV, "padding": 1, "activation": "relu"}, {"op": "max_pool2d", "kernel_size": 2}],
                              shape=(5, 12, 15)),
    "conv_avgpool_fused": net([{**CONV, "padding": 1}, {"op": "avg_pool2d", "kernel_size": [1, 2]}], shape=(5, 9, 14)),
    "pad_folded_into_conv": net([{"op": "pad", "padding": [0, 1, 0, 1]}, {**CONV, "stride": 2, "name": "c"},
                                 {"op": "pad", "padding": [2, 0, 1, 1], "inputs": ["x"]},
                                 {**CONV, "out_channels": 5, "groups": 5, "padding": [1, 0, 0, 2], "name": "dw"}],
                                outputs=["c", "dw"]),
    "se_gate_conv": net([{**CONV, "out_channels": 8, "padding": 1, "name": "c", "activation": "silu"},
                         {"op": "global_avg_pool2d"}, {**CONV, "kernel_size": 1, "out_channels": 8},
                         {"op": "hardsigmoid", "name": "s"}, {"op": "mul", "inputs": ["s", "c"]},
                         {**CONV, "kernel_size": 1, "out_channels": 6}], shape=(5, 9, 11)),
    "se_gate_split_k": net([{"op": "global_avg_pool2d", "inputs": ["x"]}, {"op": "sigmoid", "name": "s"},
                            {"op": "mul", "inputs": ["x", "s"]}, {**CONV, "out_channels": 64, "padding": 1}],
                           shape=(64, 7, 9)),
    "conv_split_k_residual": net([{**CONV, "out_channels": 64, "padding": 1, "name": "c"},
                                  {"op": "batch_norm2d", "name": "bn"}, {"op": "add", "inputs": ["bn", "x"]},
                                  {"op": "relu"}], shape=(64, 7, 9)),
}


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("case", sorted(SINGLE_OPS))
def test_single_ops(case, device):
    check_against_numpy(copy.deepcopy(SINGLE_OPS[case]), device, batch=3, tol=1e-5)


# bf16 differs from fp16 only in its conversions and mma word: CI runs it on the cases that cover
# each kernel family (GEMM, split-K, gate, fused pool, depthwise, pointwise, reductions)
BF16_IN_CI = {"conv3x3_pad", "conv_split_k_residual", "se_gate_conv", "conv_maxpool_fused", "conv_depthwise_s2",
              "activations", "global_pool_softmax", "concat_upsample"}


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("case, precision", [
    (case, precision) if precision == "fp16" or case in BF16_IN_CI
    else pytest.param(case, precision, marks=pytest.mark.slow)
    for precision in ("fp16", "bf16") for case in sorted(SINGLE_OPS)])
def test_single_ops_16_bit(case, precision, device):
    """Measured: at most 3e-5 (one or two outputs a 16-bit rounding step apart, see NODE_TOL)."""
    check_against_numpy(copy.deepcopy(SINGLE_OPS[case]), device, batch=3, tol=1e-4, precision=precision)


@pytest.mark.skipif(OPENCL_REASON is not None, reason=str(OPENCL_REASON))
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
def test_split_k_is_reduced_by_the_last_block_of_each_tile(precision):
    """One launch per split-K layer (the last block of a tile to finish adds the partial sums up);
    its tile counter must be left at zero: without the reset, the next call stores nothing."""
    from cnngraph.backends.opencl_backend import OpenCLBackend

    spec = copy.deepcopy(SINGLE_OPS["conv_split_k_residual"])
    p = cnngraph.plan(spec, 3, precision=precision)
    (split,) = [l for l in p.program.launches if "_split" in l.kernel]
    assert [l.kernel for l in p.program.launches if l.node == split.node] == [split.kernel]
    assert p.program.counters_size == split.counters == split.grid[0] * split.grid[1] > 0
    ref = cnngraph.compile(spec, batch_size=3, device="cpu", precision=precision)
    rng = np.random.default_rng(0)
    xs = [{"x": rng.standard_normal((3, 64, 7, 9)).astype(np.float32)} for _ in range(2)]
    program = copy.deepcopy(p.program)
    (planted,) = [l for l in program.launches if l.kernel == split.kernel]
    reset = re.search(r"if \(THREAD_X == 0\) counters\[[^]]*\] = 0;", planted.body)[0]
    for body, second_ok in ((split.body, True), (split.body.replace(reset, ""), False)):
        planted.body = body
        backend = OpenCLBackend(p, program=program)
        results = []
        for x in xs:  # different inputs: a stale output cannot pass for a fresh one
            backend.poison()
            (got,) = backend.run(dict(x)).values()
            results.append(np.isfinite(got).all() and rel_err(got, ref(dict(x))) <= 1e-4)
        assert results == [True, second_ok]


@pytest.mark.skipif(OPENCL_REASON is not None, reason=str(OPENCL_REASON))
def test_split_k_workspace_counts_toward_the_memory_limit():
    """The partial sums and tile counters of a split-K layer are memory the model holds: a limit
    that fits the weights and activations but not them is refused, before anything is allocated."""
    p = cnngraph.plan(copy.deepcopy(SINGLE_OPS["conv_split_k_residual"]), 3)
    scratch = 4 * (p.program.workspace_size + p.program.counters_size)
    assert p.program.workspace_size > 0
    need = cnngraph.bind(p, "opencl").memory
    assert need.scratch == scratch
    with pytest.raises(cnngraph.ResourceError, match="memory"):
        cnngraph.bind(p, "opencl", max_memory=need.total - 1)


@pytest.mark.skipif(OPENCL_REASON is not None, reason=str(OPENCL_REASON))
@pytest.mark.parametrize("name", ["lenet5", "conv_split_k_residual", "linear", "se_gate_split_k"])
def test_every_autotuning_schedule_computes_the_same(name):
    """Each candidate schedule an autotuner may pick (tiles, deeper BK, split-K variants) is correct."""
    from cnngraph.backends.opencl_backend import OpenCLBackend
    from cnngraph.codegen.lower import lower_node

    spec = example(name) if name in REDUCED else copy.deepcopy(SINGLE_OPS[name])
    ref = cnngraph.compile(spec, batch_size=2, device="cpu")
    g = ref.graph
    counts = {n: lower_node(g, n, {}, 0)[0].schedules for n in g.graph["order"]}
    x = np.random.default_rng(0).standard_normal(next(iter(ref.input_shapes.values()))).astype(np.float32)
    want = ref(x)
    for pick in range(1, max(counts.values())):
        backend = OpenCLBackend(ref.plan, {}, lower(g, {n: pick % c for n, c in counts.items()}))
        backend.poison()
        got = backend.run({g.graph["inputs"][0]: x})[g.graph["outputs"][0]]
        assert rel_err(got, want) < 1e-4, pick


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=str(CUDA_REASON))
def test_autotuned_cuda_matches_numpy():
    model = check_against_numpy(example("resnet18"), "cuda", batch=2)
    tuned = cnngraph.compile(example("resnet18"), batch_size=2, device="cuda", autotune=True, weights=model.weights)
    assert tuned.backend.tuning, "no conv was tuned"
    for pick, best, default in tuned.backend.tuning.values():
        assert best <= default
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    tuned.backend.poison()
    assert rel_err(tuned(x), model(x)) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=str(CUDA_REASON))
def test_cuda_graph_replay_and_cupy_arrays():
    import cupy as cp

    spec = example("resnet18")
    with_graph = cnngraph.compile(spec, batch_size=1, device="cuda")
    without = cnngraph.compile(spec, batch_size=1, device="cuda", cuda_graph=False)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    first = with_graph(x)
    for _ in range(3):
        np.testing.assert_array_equal(with_graph(x), first)
    assert with_graph.backend.graph is not None and without.backend.graph is None
    np.testing.assert_allclose(without(x), first, rtol=1e-5, atol=1e-5)
    y = with_graph(cp.asarray(x))
    assert isinstance(y, cp.ndarray)
    np.testing.assert_array_equal(y.get(), first)


# --- NVRTC: every kernel of every example compiles, with no local memory --------------------------

def _nvrtc_reason():
    try:
        from cnngraph.codegen.nvrtc import compile_cuda
        compile_cuda('extern "C" __global__ void probe(float* a) { a[0] = 1.0f; }')
    except Exception as err:
        return f"NVRTC unavailable: {err}"
    return None


NVRTC_REASON = _nvrtc_reason()


@pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", REDUCED_EXAMPLES)
def test_nvrtc_compiles_without_local_memory(name, batch, arch):
    from cnngraph.codegen.nvrtc import compile_cuda

    spec = json.loads((EXAMPLES / f"{name}.json").read_text())  # full size: the shapes that ship
    program = lower(cnngraph.compile(spec, batch_size=batch, device="cpu").graph)
    reports = compile_cuda(program.source(CUDA), arch, name=f"{name}.cu")
    assert set(reports) == {launch.kernel for launch in program.launches}
    for r in reports.values():
        assert (r.stack_bytes, r.spill_stores, r.spill_loads) == (0, 0, 0), r


@pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))
def test_nvrtc_reports_template_errors_with_the_log():
    from cnngraph.codegen.nvrtc import NvrtcError, compile_cuda

    with pytest.raises(NvrtcError, match=r"broken\.cu.*\n.*error"):
        compile_cuda(CUDA.render('KERNEL void k(float* y) { y[0] = undefined_name; }'), name="broken.cu")


# --- add and concat of more inputs than one kernel's parameters can hold ----------------------------

def wide_join(op: str, count: int) -> dict:
    """An `op` named "join" of `count` inputs: first one read by nothing else (an add may write over
    it), then the input and two activations of it in turn; the add followed by a relu (fused into
    its last kernel)."""
    sources = ["x", "a", "b"]
    layers = [{"op": "relu", "name": "a", "inputs": ["x"]}, {"op": "sigmoid", "name": "b", "inputs": ["x"]},
              {"op": "tanh", "name": "first", "inputs": ["x"]},
              {"op": op, "name": "join", "inputs": ["first", *(sources[i % 3] for i in range(count - 1))]}]
    return {"format_version": 1, "name": f"{op}{count}", "inputs": [{"name": "x", "shape": [2, 3, 3]}],
            "layers": layers + ([{"op": "relu", "name": "act"}] if op == "add" else [])}


WIDE = 5000  # past 4,100 inputs one CUDA kernel's parameter space (32 KiB) overflows


@pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))
@pytest.mark.parametrize("op", ["add", "concat"])
def test_nvrtc_compiles_an_add_or_concat_of_5000_inputs(op):
    from cnngraph.codegen.nvrtc import compile_cuda
    from cnngraph.codegen.templates import MAX_KERNEL_INPUTS

    program = cnngraph.plan(wide_join(op, WIDE), batch_size=2).program
    joins = [launch for launch in program.launches if "join" in launch.layers]
    assert len(joins) == -(-WIDE // MAX_KERNEL_INPUTS)  # a chain of kernels of bounded arity
    assert all(sum(kind == "tensor" for kind, _ in launch.args) <= MAX_KERNEL_INPUTS + 2 for launch in joins)
    reports = compile_cuda(program.source(CUDA), "sm_90", name=f"{op}{WIDE}.cu")
    assert set(reports) == {launch.kernel for launch in program.launches}


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("count", [300, pytest.param(WIDE, marks=pytest.mark.slow)])  # PoCL: a minute at 5,000
@pytest.mark.parametrize("op", ["add", "concat"])
def test_add_and_concat_of_many_inputs_agree_with_numpy(op, count, device):
    model = check_against_numpy(wide_join(op, count), device, tol=1e-6)
    if op == "add":  # the add and relu fused: the kernels write over the add's first input, read before
        assert model.graph.nodes["act"]["in_place_of"] == "first"


@pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))
def test_nvrtc_failure_is_an_internal_error_naming_the_kernel():
    from cnngraph.codegen.nvrtc import NvrtcError, compile_cuda

    params = ", ".join(f"const float* x{i}" for i in range(WIDE))  # what one kernel of a 5,000-input add once took
    source = CUDA.render(f"KERNEL void fine(float* y) {{ y[0] = 1.0f; }}\nKERNEL void wide({params}, float* y) {{ }}")
    with pytest.raises(NvrtcError) as info:
        compile_cuda(source, name="wide.cu")
    assert isinstance(info.value, cnngraph.errors.InternalError) and not isinstance(info.value, cnngraph.CnnGraphError)
    message = str(info.value)
    assert message.startswith("NVRTC failed to compile kernel wide of wide.cu (sm_90)")
    assert "Formal parameter space overflowed" in message  # the log


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=str(CUDA_REASON))
def test_cuda_module_that_fails_to_compile_is_an_internal_error_naming_the_kernel():
    from cnngraph.codegen.nvrtc import NvrtcError

    plan = cnngraph.plan(wide_join("concat", 3))
    broken = plan.program.launches[-1]
    broken.body = broken.body.replace("float v = 0.0f;", "float v = undefined_name;")
    with pytest.raises(NvrtcError, match=rf"kernel {broken.kernel} of the CUDA module of concat3.*\n.*undefined_name"):
        cnngraph.bind(plan, device="cuda")


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_depthwise_threads_compute_four_outputs_from_a_register_window(precision):
    """mobilenet_v2's depthwise convs at every precision: a thread per 4 outputs of a row (a quarter
    of the threads one output each would take), which read each input row once, into registers."""
    p = cnngraph.plan(EXAMPLES / "mobilenet_v2.json", 2, precision=precision)
    depthwise = [launch for launch in p.program.launches if "_dw_" in launch.kernel]
    assert len(depthwise) == 17
    for launch in depthwise:
        n, c, rows, columns = p.graph.nodes[launch.node]["shape"]
        threads = n * c * rows * -(-columns // 4)
        assert launch.grid[0] == -(-threads // launch.block[0]), launch.kernel
        assert "float acc[4];" in launch.body and "float xr[" in launch.body, launch.kernel
