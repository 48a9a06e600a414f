"""What the fusion passes must NOT fuse, and that a fusion leaves its neighbours alone.

tests/test_passes.py checks each pass on hand-made graphs; this file adds the cases where a guard of
a pass is all that stands between a network and a wrong answer: a producer the pass does not know
how to take (a pool, a concat, the network input, a linear for a per-channel fold), a node that
already carries an epilogue or a gate, an operand in the wrong place, a tensor that only looks like
a gate. Each case is checked on the pass alone (the graph unchanged, the fusion report as
expected) and, where the pipeline can reach it, through the whole pipeline: which node implements
which layers, which kernels the program launches, and that the optimized network computes what the
unoptimized one does. Some guards only matter when the passes run in another order than the
pipeline's (or twice); those cases run the passes in that order, since each pass is a function
Graph -> Graph that must be correct on any graph it is given.

Each guard was checked by deleting it: the test named for it fails (see the report of the change
that added this file)."""

from __future__ import annotations

import numpy as np
import pytest

import cnngraph
from cnngraph.passes.fold_batch_norm import fold_batch_norm
from cnngraph.passes.fold_pad import fold_pad
from cnngraph.passes.fuse_activation import fuse_activation
from cnngraph.passes.fuse_batch_norm_epilogue import fuse_batch_norm_epilogue
from cnngraph.passes.fuse_gate import fuse_gate
from cnngraph.passes.fuse_pool import fuse_pool
from cnngraph.passes.fuse_residual_add import fuse_residual_add
from test_backends import rel_err
from test_passes import N, all_layers, assert_well_formed, conv, net, nodes, raw, report, run_passes


def kernels(spec, batch=2):
    """The optimized plan as {node: layers} in execution order, checked against its program: every
    node has its kernel(s), each launch implements exactly its node's layers."""
    plan = cnngraph.plan(spec, batch)
    g = plan.graph
    layers = {n: g.nodes[n]["layers"] for n in g.graph["order"]}
    launched = {}
    for launch in plan.program.launches:
        assert launch.layers == layers[launch.node], (launch.kernel, launch.layers, layers[launch.node])
        launched[launch.node] = launched.get(launch.node, 0) + 1
    assert set(launched) == set(layers), (sorted(launched), sorted(layers))
    return layers


def assert_same_as_unoptimized(spec, batch=2, seed=0):
    """The optimized network (NumPy backend) against the unoptimized one, on every output."""
    model = cnngraph.compile(spec, batch_size=batch, device="cpu")
    plain = cnngraph.compile(spec, batch_size=batch, device="cpu", optimize=False, weights=model.weights)
    rng = np.random.default_rng(seed)
    xs = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in model.input_shapes.items()}
    got, want = model(xs), plain(xs)
    got, want = (got, want) if isinstance(got, dict) else ({"y": got}, {"y": want})
    for out in want:
        assert rel_err(got[out], want[out]) <= 1e-5, (out, rel_err(got[out], want[out]))


def unchanged_by(g, *passes):
    """Run the passes; assert they changed nothing; return the fusion report."""
    expected = nodes(g)
    run_passes(g, *passes)
    assert nodes(g) == expected
    return report(g)


# --- fold_batch_norm ------------------------------------------------------------------------------

def test_scale_after_a_linear_is_not_folded_into_its_weights():
    """fold_batch_norm folds into a conv2d's (O, I, kh, kw) weights only: a layer scale after a
    linear joins the linear's epilogue instead (guard: `host.op != "conv2d"`)."""
    spec = net([{"op": "flatten", "name": "f"}, {"op": "linear", "name": "l", "out_features": 6},
                {"op": "scale", "name": "s"}, {"op": "tanh", "name": "t"}], shape=(3, 5, 1))
    g = raw(spec)
    assert unchanged_by(g, fold_batch_norm) == []
    run_passes(g, fuse_batch_norm_epilogue)
    assert nodes(g) == {"x": N("input", [], []), "f": N("flatten", ["f"], ["x"]),
                        "s": N("linear+scale", ["l", "s"], ["f"], [("scale_shift", "batch_norm2d")]),
                        "t": N("tanh", ["t"], ["s"])}
    assert g.nodes["s"]["weights"]["weight"].shape == (6, 15)  # the linear's own weights, untouched
    assert kernels(spec) == {"f": ["f"], "t": ["l", "s", "t"]}
    assert_same_as_unoptimized(spec)


def test_batch_norm_after_a_conv_holding_a_residual_add_is_not_folded():
    """conv -> add -> bn, with the add already in the conv's epilogue: folding the BN into the
    weights would scale the conv but not the residual (guard: `host.epilogue`)."""
    g = raw(net([conv("c"), {"op": "add", "name": "a", "inputs": ["c", "x"]}, {"op": "batch_norm2d", "name": "bn"}]))
    before = all_layers(g)
    run_passes(g, fuse_residual_add)
    assert unchanged_by(g, fold_batch_norm) == []
    assert nodes(g)["bn"] == N("batch_norm2d", ["bn"], ["a"])
    assert_well_formed(g, before)


def test_batch_norm_carrying_an_activation_is_not_folded_as_a_bare_affine():
    """A BN node that already applies a relu after itself (fuse_activation ran first) is no plain
    per-channel affine: folding it into the conv would drop the relu (guard: `is_plain` in
    `affine_of`)."""
    g = raw(net([conv("c"), {"op": "batch_norm2d", "name": "bn"}, {"op": "relu", "name": "r"}]))
    run_passes(g, fuse_activation)
    assert nodes(g)["r"] == N("batch_norm2d+relu", ["bn", "r"], ["c"], [("activation", "relu")])
    assert unchanged_by(g, fold_batch_norm) == []


# --- fold_pad -------------------------------------------------------------------------------------

@pytest.mark.parametrize("reader", [
    {"op": "max_pool2d", "name": "r", "kernel_size": 2},  # a max pool pads with -inf, not zeros
    {"op": "avg_pool2d", "name": "r", "kernel_size": 3, "stride": 2, "count_include_pad": False},
    {"op": "relu", "name": "r"},
    {"op": "upsample2d", "name": "r", "scale_factor": 2},
])
def test_pad_before_anything_but_a_conv_is_not_folded(reader):
    """Only a conv2d can take a pad into its own padding (guard: `host.op != "conv2d"`)."""
    spec = net([{"op": "pad", "name": "p", "padding": [1, 0, 2, 1]}, reader])
    assert unchanged_by(raw(spec), fold_pad) == []
    assert kernels(spec) == {"p": ["p"], "r": ["r"]}
    assert_same_as_unoptimized(spec)


def test_replicate_pad_is_not_folded():
    spec = net([{"op": "pad", "name": "p", "padding": [1, 0, 2, 1], "mode": "replicate"}, conv("c", pad=0)])
    assert unchanged_by(raw(spec), fold_pad) == [("pad+conv2d", ["p", "c"], False, "not_zero_padding")]
    assert kernels(spec) == {"p": ["p"], "c": ["c"]}
    assert_same_as_unoptimized(spec)


def test_zero_pad_folds_into_a_conv_that_has_an_activation_field():
    """A conv's own `activation` field is no fused step that blocks the fold: the ONNX importer
    writes Conv + Relu that way, so TensorFlow's Pad -> Conv -> Relu arrives as exactly this (the
    pass once took only a conv with nothing fused, `is_plain`, which counts the activation field)."""
    spec = net([{"op": "pad", "name": "p", "padding": [0, 1, 0, 1]}, conv("c", pad=0, stride=2, activation="relu")])
    g = raw(spec)
    assert run_passes(g, fold_pad) == ["folded p into the padding of c"]
    assert nodes(g) == {"x": N("input", [], []), "c": N("conv2d+relu", ["p", "c"], ["x"])}
    assert report(g) == [("pad+conv2d+relu", ["p", "c"], True, None)]
    assert kernels(spec) == {"c": ["p", "c"]}
    assert_same_as_unoptimized(spec)


# --- fuse_activation ------------------------------------------------------------------------------

def test_activation_on_a_network_input_stays_a_kernel_and_its_neighbour_still_fuses():
    """relu(x) has no producer to fuse into (guard: `host is None`); the conv -> relu beside it
    fuses as usual."""
    spec = net([{"op": "relu", "name": "r0"}, conv("c", inputs=["x"]), {"op": "relu", "name": "r1"},
                {"op": "add", "name": "a", "inputs": ["r0", "r1"]}])
    g = raw(spec)
    run_passes(g, fuse_activation)
    assert nodes(g) == {"x": N("input", [], []), "r0": N("relu", ["r0"], ["x"]),
                        "r1": N("conv2d+relu", ["c", "r1"], ["x"]), "a": N("add", ["a"], ["r0", "r1"])}
    assert report(g) == [("conv2d+relu", ["c", "r1"], True, None)]
    assert kernels(spec) == {"r0": ["r0"], "r1": ["c", "r1"], "a": ["a"]}
    assert_same_as_unoptimized(spec)


def test_activations_on_a_conv_with_two_readers_each_stay_a_kernel():
    """conv read by a relu and a sigmoid: neither may become the conv's activation."""
    spec = net([conv("c"), {"op": "relu", "name": "r", "inputs": ["c"]}, {"op": "sigmoid", "name": "s", "inputs": ["c"]},
                {"op": "mul", "name": "m", "inputs": ["r", "s"]}])
    g = raw(spec)
    assert unchanged_by(g, fuse_activation) == [("conv2d+relu", ["c", "r"], False, "multiple_consumers"),
                                                ("conv2d+sigmoid", ["c", "s"], False, "multiple_consumers")]
    assert kernels(spec) == {"c": ["c"], "r": ["r"], "s": ["s"], "m": ["m"]}
    assert_same_as_unoptimized(spec)


def test_activation_carrying_a_batch_norm_is_not_refused_as_a_bare_activation():
    """fuse_batch_norm_epilogue ran first: the relu node now applies relu then the BN's scale +
    shift. Re-fusing it into the conv as a plain relu would drop the BN (guard: `is_plain` of the
    activation)."""
    g = raw(net([conv("c"), {"op": "relu", "name": "r"}, {"op": "batch_norm2d", "name": "bn"}]))
    run_passes(g, fuse_batch_norm_epilogue)
    assert nodes(g)["bn"] == N("relu+batch_norm2d", ["r", "bn"], ["c"], [("scale_shift", "batch_norm2d")])
    assert unchanged_by(g, fuse_activation) == []


# --- fuse_batch_norm_epilogue ----------------------------------------------------------------------

@pytest.mark.parametrize("producer, op", [
    ({"op": "max_pool2d", "name": "p", "kernel_size": 2}, "max_pool2d"),
    ({"op": "avg_pool2d", "name": "p", "kernel_size": [2, 1]}, "avg_pool2d"),
    ({"op": "concat", "name": "p", "inputs": ["x", "x"]}, "concat"),
    ({"op": "upsample2d", "name": "p", "scale_factor": 2}, "upsample2d"),
    ({"op": "channel_shuffle", "name": "p", "groups": 2}, "channel_shuffle"),
    ({"op": "global_avg_pool2d", "name": "p"}, "global_avg_pool2d"),
])
def test_batch_norm_after_a_window_or_layout_op_stays_a_kernel(producer, op):
    """Pools, concat, upsample and shuffle have no epilogue to take a scale + shift (guard: the
    GEMM/ELEMENTWISE host check)."""
    spec = net([producer, {"op": "batch_norm2d", "name": "bn"}])
    g = raw(spec)
    assert unchanged_by(g, fold_batch_norm, fuse_batch_norm_epilogue) == \
        [(f"{op}+batch_norm2d", ["p", "bn"], False, "no_epilogue_host")]
    assert kernels(spec) == {"p": ["p"], "bn": ["bn"]}
    assert_same_as_unoptimized(spec)


# --- fuse_gate ------------------------------------------------------------------------------------

def gated(op="mul", gate_layers=None, reader=None, shape=(8, 7, 9)):
    """x (8, H, W) -> gap -> 1x1 conv -> sigmoid = s; m = op(x, s); a 1x1 conv reads m."""
    gate = gate_layers or [{"op": "global_avg_pool2d", "name": "gap"}, conv("fc", out=8, k=1, pad=0),
                           {"op": "sigmoid", "name": "s"}]
    return net([*gate, {"op": op, "name": "m", "inputs": ["x", "s"]},
                reader or conv("p", out=5, k=1, pad=0)], shape=shape)


@pytest.mark.parametrize("op", ["sub", "div"])
def test_sub_or_div_by_a_per_channel_tensor_is_no_gate(op):
    """A gate multiplies: x - s or x / s read by a conv stays its own kernel (guard: `op != "mul"`)."""
    spec = gated(op)
    assert unchanged_by(raw(spec), fuse_gate) == []
    assert kernels(spec)["m"] == ["m"]
    assert_same_as_unoptimized(spec)


def test_mul_by_a_scalar_tensor_is_no_gate():
    """x (8, H, W) * s (1, 1, 1): the gated conv reads one gate per channel, this has one in all
    (guard: the gate's shape is (C, 1, 1) with x's C)."""
    spec = gated(gate_layers=[{"op": "mean", "name": "gap", "keepdim": True}, conv("fc", out=1, k=1, pad=0),
                              {"op": "sigmoid", "name": "s"}])
    assert unchanged_by(raw(spec), fuse_gate) == []
    assert kernels(spec)["m"] == ["m"]
    assert_same_as_unoptimized(spec)


def test_mul_of_two_per_channel_tensors_is_no_gate():
    """(C, 1, 1) * (C, 1, 1): no spatial tensor to gate (guard: `spatial != [1, 1]`)."""
    spec = gated(shape=(8, 1, 1))
    assert unchanged_by(raw(spec), fuse_gate) == []
    assert kernels(spec)["m"] == ["m"]
    assert_same_as_unoptimized(spec)


def test_gated_tensor_read_as_a_conv_residual_is_not_fused_as_its_gate():
    """p = conv(x) with the residual add(p, m) in its epilogue reads m as its second input: the gate
    applies to a conv's first input only (guard: `inputs[0] == mul`)."""
    spec = gated(reader=conv("p", out=8))
    spec["layers"].append({"op": "add", "name": "a", "inputs": ["p", "m"]})
    spec["layers"][-2]["inputs"] = ["x"]
    g = raw(spec)
    run_passes(g, fuse_residual_add)
    assert nodes(g)["a"] == N("conv2d+add", ["p", "a"], ["x", "m"], [("add", 0)])
    assert unchanged_by(g, fuse_gate) == []
    layers = kernels(spec)
    assert layers["m"] == ["m"] and layers["a"] == ["p", "a"]
    assert_same_as_unoptimized(spec)


def test_mul_with_an_activation_epilogue_is_no_gate():
    """relu(x * s) read by a conv: fuse_activation put the relu into the mul, which is no plain
    gate any more; gating the conv's load would drop the relu (guard: `is_plain` of the mul)."""
    spec = gated()
    spec["layers"].insert(4, {"op": "relu", "name": "r"})
    g = raw(spec)
    run_passes(g, fuse_activation)
    assert nodes(g)["r"] == N("mul+relu", ["m", "r"], ["x", "s"], [("activation", "relu")])
    assert unchanged_by(g, fuse_gate) == []
    assert kernels(spec)["r"] == ["m", "r"]
    assert_same_as_unoptimized(spec)


def test_a_conv_takes_one_gate_even_when_fuse_gate_runs_twice():
    """(x * s1) * s2 -> conv: the second mul gates the conv; a second run must not fold the first
    mul into the already gated conv (guard: `not gated`)."""
    spec = net([{"op": "global_avg_pool2d", "name": "gap"}, {"op": "sigmoid", "name": "s1"},
                {"op": "tanh", "name": "s2", "inputs": ["gap"]}, {"op": "mul", "name": "m1", "inputs": ["x", "s1"]},
                {"op": "mul", "name": "m2", "inputs": ["m1", "s2"]}, conv("p", out=5, k=1, pad=0)], shape=(8, 7, 9))
    g = raw(spec)
    assert run_passes(g, fuse_gate) == ["fused m2 into p as an input gate"]
    once = nodes(g)
    assert once["p"] == N("mul+conv2d", ["m2", "p"], ["m1", "s2"]) and once["m1"] == N("mul", ["m1"], ["x", "s1"])
    assert unchanged_by(g, fuse_gate) == []
    assert kernels(spec) == {"gap": ["gap"], "s1": ["s1"], "s2": ["s2"], "m1": ["m1"], "p": ["m2", "p"]}
    assert_same_as_unoptimized(spec)


def test_any_per_channel_factor_is_a_gate_not_only_a_sigmoid_of_a_pool():
    """The gate need not be squeeze-excitation's sigmoid(pool(x)): scaling a load by any
    per-(sample, channel) factor is exact, here a second network input. The neighbours (the conv
    after, a relu reading x beside) are left as they were."""
    spec = {"format_version": 1, "name": "t", "inputs": [{"name": "x", "shape": [6, 5, 7]}, {"name": "s", "shape": [6, 1, 1]}],
            "layers": [{"op": "mul", "name": "m", "inputs": ["s", "x"]}, conv("p", out=4, k=3),
                       {"op": "relu", "name": "r", "inputs": ["x"]}, {"op": "tanh", "name": "t", "inputs": ["p"]}],
            "outputs": ["t", "r"]}
    g = raw(spec)
    assert run_passes(g, fuse_gate) == ["fused m into p as an input gate"]
    assert nodes(g) == {"x": N("input", [], []), "s": N("input", [], []), "p": N("mul+conv2d", ["m", "p"], ["x", "s"]),
                        "r": N("relu", ["r"], ["x"]), "t": N("tanh", ["t"], ["p"])}
    assert kernels(spec) == {"t": ["m", "p", "t"], "r": ["r"]}
    assert_same_as_unoptimized(spec)


# --- fuse_pool ------------------------------------------------------------------------------------

def test_a_second_pool_after_a_fused_pool_stays_a_kernel():
    """conv -> pool -> pool: the first pool fuses, the second cannot join a node that already
    pools (guard: `host.pool is not None`)."""
    spec = net([conv("c"), {"op": "max_pool2d", "name": "p1", "kernel_size": 2},
                {"op": "avg_pool2d", "name": "p2", "kernel_size": 2}], shape=(4, 12, 8))
    g = raw(spec)
    assert run_passes(g, fuse_pool) == ["fused p1 into c"]
    assert nodes(g) == {"x": N("input", [], []), "p1": N("conv2d+max_pool2d", ["c", "p1"], ["x"]),
                        "p2": N("avg_pool2d", ["p2"], ["p1"])}
    assert g.nodes["p1"]["compute"].pool.spec.op == "max_pool2d"
    assert kernels(spec) == {"p1": ["c", "p1"], "p2": ["p2"]}
    assert_same_as_unoptimized(spec)


@pytest.mark.parametrize("pool", [
    {"op": "max_pool2d", "kernel_size": [2, 2], "stride": [2, 1]},  # overlapping in W only
    {"op": "avg_pool2d", "kernel_size": [2, 4], "stride": [1, 4]},  # overlapping in H only
    {"op": "max_pool2d", "kernel_size": [1, 2], "stride": 1},
])
def test_pool_overlapping_in_one_dimension_is_not_fused(pool):
    """Windows small enough for the fused store, overlapping in one dimension only: the stride must
    equal the kernel in both (guard: `(sh, sw) != (kh, kw)`)."""
    spec = net([conv("c"), {**pool, "name": "p"}], shape=(4, 8, 12))
    assert unchanged_by(raw(spec), fuse_pool) == \
        [(f"conv2d+{pool['op']}", ["c", "p"], False, "overlapping_pool_unsupported")]
    assert kernels(spec) == {"c": ["c"], "p": ["p"]}
    assert_same_as_unoptimized(spec)


def test_pool_on_a_network_input_is_not_considered():
    spec = net([{"op": "max_pool2d", "name": "p", "kernel_size": 2}, conv("c")])
    assert unchanged_by(raw(spec), fuse_pool) == []
    assert kernels(spec) == {"p": ["p"], "c": ["c"]}


def test_pool_fusion_leaves_the_neighbouring_branches_alone():
    """Three conv -> pool branches: a grouped (not depthwise) conv with a 2x2 pool fuses; a
    depthwise conv and an overlapping pool do not; each keeps its kernel."""
    spec = net([conv("g", out=4, groups=2), {"op": "max_pool2d", "name": "pg", "kernel_size": 2},
                conv("d", out=4, groups=4, inputs=["x"]), {"op": "max_pool2d", "name": "pd", "kernel_size": 2},
                conv("o", inputs=["x"]), {"op": "avg_pool2d", "name": "po", "kernel_size": 2, "stride": 1},
                {"op": "concat", "name": "cat", "inputs": ["pg", "pd"]}], shape=(4, 8, 6), outputs=["cat", "po"])
    g = raw(spec)
    assert run_passes(g, fuse_pool) == ["fused pg into g"]
    assert report(g) == [("conv2d+max_pool2d", ["g", "pg"], True, None),
                         ("conv2d+max_pool2d", ["d", "pd"], False, "depthwise_conv"),
                         ("conv2d+avg_pool2d", ["o", "po"], False, "overlapping_pool_unsupported")]
    assert kernels(spec) == {"pg": ["g", "pg"], "d": ["d"], "pd": ["pd"], "cat": ["cat"], "o": ["o"], "po": ["po"]}
    assert_same_as_unoptimized(spec)


# --- fuse_residual_add ----------------------------------------------------------------------------

def test_add_whose_other_operand_is_computed_from_the_conv_is_not_fused():
    """add(c, tanh(c)): the tanh needs c's result before the add can run, so c cannot compute the
    add in its epilogue (it would read its own output: a cycle). Guard: c's second reader."""
    spec = net([conv("c"), {"op": "tanh", "name": "t"}, {"op": "add", "name": "a", "inputs": ["c", "t"]}])
    g = raw(spec)
    assert unchanged_by(g, fuse_residual_add) == [("conv2d+add", ["c", "a"], False, "multiple_consumers")]
    assert kernels(spec) == {"c": ["c"], "t": ["t"], "a": ["a"]}
    assert_same_as_unoptimized(spec)


def test_second_add_after_a_conv_holding_an_add_is_not_fused():
    """(conv + x) + y: the first add goes into the conv's epilogue; the second cannot replace it
    (guard: `host.epilogue`, reported as activation_before_add)."""
    spec = {"format_version": 1, "name": "t", "inputs": [{"name": "x", "shape": [4, 7, 7]}, {"name": "y", "shape": [4, 7, 7]}],
            "layers": [conv("c"), {"op": "add", "name": "a1", "inputs": ["c", "x"]},
                       {"op": "add", "name": "a2", "inputs": ["a1", "y"]}]}
    g = raw(spec)
    assert run_passes(g, fuse_residual_add) == ["fused a1 into c"]
    assert nodes(g) == {"x": N("input", [], []), "y": N("input", [], []),
                        "a1": N("conv2d+add", ["c", "a1"], ["x", "x"], [("add", 0)]),
                        "a2": N("add", ["a2"], ["a1", "y"])}
    assert report(g) == [("conv2d+add", ["c", "a1"], True, None),
                         ("conv2d+add+add", ["c", "a1", "a2"], False, "activation_before_add")]
    assert kernels(spec) == {"a1": ["c", "a1"], "a2": ["a2"]}
    assert_same_as_unoptimized(spec)
