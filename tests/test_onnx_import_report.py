"""The ONNX importer's constant folding (shape arithmetic), its report of what cannot be expressed,
and where it puts the blame for a converter's failure.

- Folding: every op the evaluator knows, on hand-made constants, against onnx's reference
  evaluator; the batch symbol N through Shape -> Gather -> Unsqueeze -> Concat, through the
  arithmetic that leaves it unchanged, and a one-line refusal where its value is needed; folding
  before any layer converter; the size cap; inconsistent constants as one line.
- PyTorch exports (opsets 13 and 17) of modules whose forward does shape arithmetic.
- The report: a summary by op type first, most frequent first; every op without a converter, also
  downstream of another problem; no shape arithmetic that fails only because it reads a blocked
  tensor; hints.
- Blame: a malformed node (the ONNX schema's checks) is the file's, in one line; a converter that
  fails on a well-formed node is an InternalError asking for a report.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402
from torch import nn  # noqa: E402

import cnngraph  # noqa: E402
from cnngraph.errors import InternalError  # noqa: E402
from cnngraph.interop import onnx_import, onnx_nodes  # noqa: E402
from cnngraph.interop.onnx_import import Importer, load_model  # noqa: E402
from cnngraph.interop.onnx_nodes import MAX_FOLDED_ELEMENTS, pattern_only  # noqa: E402
from cnngraph.ops.onnx_mapping import BATCH  # noqa: E402
from test_cli import run_main  # noqa: E402
from zoo_torch import Fn  # noqa: E402

X = [("x", ["N", 3, 4, 4])]
RELU = helper.make_node("Relu", ["x"], ["y"], name="relu")  # the network the constants sit beside


def model(nodes, inputs=X, outputs=(("y", ["N", 3, 4, 4]),), initializers=(), opset=17):
    def info(name, dims, dtype=TensorProto.FLOAT):
        return helper.make_tensor_value_info(name, dtype, dims)

    graph = helper.make_graph(nodes, "hand", [info(n, d) for n, d in inputs], [info(n, d) for n, d in outputs],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def save(m, path: Path) -> Path:
    path.write_bytes(m.SerializeToString())
    return path


def importer(m, tmp_path, name="m.onnx") -> Importer:
    path = save(m, tmp_path / name)
    return Importer(load_model(path), str(path))


def import_error(m, tmp_path, name="m.onnx") -> str:
    """The one-line SpecError the import of `m` raises."""
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(save(m, tmp_path / name))
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def folded(nodes, initializers, tmp_path, opset=17) -> dict:
    """The constants the import knows after folding `nodes` beside a Relu network (which must import)."""
    imp = importer(model([*nodes, RELU], initializers=initializers, opset=opset), tmp_path)
    spec, _ = imp.run()
    assert [layer.op for layer in spec.layers] == ["relu"]  # no constant became a layer
    return imp.consts


# --- every op the evaluator knows, against onnx's reference implementation -------------------------------

I64 = np.int64
FOLD_CASES = {  # id: (op, inputs as arrays (None: omitted), attributes, outputs)
    "div_int_truncates": ("Div", [np.array([7, -7, 7, -7, 6], I64), np.array([2, 2, -2, -2, 3], I64)], {}),
    "div_float": ("Div", [np.array([7, -7], np.float32), np.array([2, 2], np.float32)], {}),
    "mul_broadcast": ("Mul", [np.arange(6, dtype=I64).reshape(2, 3), np.array([2], I64)], {}),
    "add": ("Add", [np.array([1, 2], I64), np.array(3, I64)], {}),
    "sub": ("Sub", [np.array([1, 2], I64), np.array([5, -5], I64)], {}),
    "mod": ("Mod", [np.array([7, -7, 7], I64), np.array([3, 3, -3], I64)], {}),
    "fmod": ("Mod", [np.array([7.5, -7.5], np.float32), np.array([2, 2], np.float32)], {"fmod": 1}),
    "neg": ("Neg", [np.array([1, -2], I64)], {}),
    "abs": ("Abs", [np.array([1, -2], I64)], {}),
    "ceil": ("Ceil", [np.array([1.5, -1.5, 2.0], np.float32)], {}),
    "floor": ("Floor", [np.array([1.5, -1.5], np.float32)], {}),
    "round_half_even": ("Round", [np.array([0.5, 1.5, 2.5, -0.5], np.float32)], {}),
    "sqrt": ("Sqrt", [np.array([4.0, 2.0], np.float32)], {}),
    "pow_int": ("Pow", [np.array([2, 3], I64), np.array([3, 2], I64)], {}),
    "pow_float": ("Pow", [np.array([2.0, 9.0], np.float32), np.array([0.5], np.float32)], {}),
    "clip": ("Clip", [np.array([-5, 0, 5], I64), np.array(-1, I64), np.array(3, I64)], {}),
    "clip_min_only": ("Clip", [np.array([-5.0, 5.0], np.float32), np.array(0, np.float32)], {}),
    "min": ("Min", [np.array([1, 5], I64), np.array([3, 2], I64), np.array([4], I64)], {}),
    "max": ("Max", [np.array([1, 5], I64), np.array([3, 2], I64)], {}),
    "sum": ("Sum", [np.array([1, 5], I64), np.array([3, 2], I64)], {}),
    "equal": ("Equal", [np.array([1, 5], I64), np.array([1, 2], I64)], {}),
    "less": ("Less", [np.array([1, 5], I64), np.array([3, 2], I64)], {}),
    "greater": ("Greater", [np.array([1, 5], I64), np.array([3, 2], I64)], {}),
    "not": ("Not", [np.array([True, False])], {}),
    "where": ("Where", [np.array([True, False]), np.array([1, 2], I64), np.array([3, 4], I64)], {}),
    "constant_of_shape": ("ConstantOfShape", [np.array([2, 3], I64)],
                          {"value": numpy_helper.from_array(np.array([7], I64))}),
    "constant_of_shape_default": ("ConstantOfShape", [np.array([2], I64)], {}),
    "concat": ("Concat", [np.array([1, 2], I64), np.array([3], I64)], {"axis": 0}),
    "range_int": ("Range", [np.array(1, I64), np.array(10, I64), np.array(3, I64)], {}),
    "range_negative": ("Range", [np.array(10, I64), np.array(1, I64), np.array(-4, I64)], {}),
    "range_float": ("Range", [np.array(0, np.float32), np.array(1, np.float32), np.array(0.3, np.float32)], {}),
    "reshape_zero_minus1": ("Reshape", [np.arange(24, dtype=I64).reshape(2, 3, 4), np.array([0, -1], I64)], {}),
    "expand": ("Expand", [np.array([[1], [2]], I64), np.array([2, 3], I64)], {}),
    "transpose": ("Transpose", [np.arange(6, dtype=I64).reshape(1, 2, 3)], {"perm": [2, 0, 1]}),
    "cast_float_to_int_truncates": ("Cast", [np.array([1.7, -1.7], np.float32)], {"to": TensorProto.INT64}),
    "gather_negative_index": ("Gather", [np.array([5, 6, 7], I64), np.array([-1, 0], I64)], {}),
    "gather_axis1": ("Gather", [np.arange(6, dtype=I64).reshape(2, 3), np.array(2, I64)], {"axis": 1}),
    "unsqueeze": ("Unsqueeze", [np.array(4, I64), np.array([0], I64)], {}),
    "squeeze": ("Squeeze", [np.array([[4]], I64), np.array([1], I64)], {}),
    "shape_of_constant": ("Shape", [np.zeros((2, 3, 5), np.float32)], {"start": 1}),
    "size": ("Size", [np.zeros((2, 3), np.float32)], {}),
    "reduce_prod": ("ReduceProd", [np.array([[2, 3], [4, 5]], I64)], {"axes": [1], "keepdims": 0}),
    "reduce_sum": ("ReduceSum", [np.array([[2, 3], [4, 5]], I64), np.array([0], I64)], {}),
    "reduce_min": ("ReduceMin", [np.array([[2, 3], [4, 1]], I64)], {"keepdims": 0}),
    "reduce_max": ("ReduceMax", [np.array([[2, 3], [4, 1]], I64)], {"axes": [0]}),
    "identity": ("Identity", [np.array([1, 2], I64)], {}),
    "slice_basic": ("Slice", [np.arange(10, dtype=I64), np.array([2], I64), np.array([7], I64)], {}),
    "slice_negative_step": ("Slice", [np.arange(10, dtype=I64), np.array([-1], I64), np.array([-2**63], I64),
                                      np.array([0], I64), np.array([-3], I64)], {}),
    "slice_int64_max_end": ("Slice", [np.arange(12, dtype=I64).reshape(3, 4), np.array([1], I64),
                                      np.array([2**63 - 1], I64), np.array([-1], I64)], {}),
    "slice_two_axes": ("Slice", [np.arange(12, dtype=I64).reshape(3, 4), np.array([0, -2], I64),
                                 np.array([2, 100], I64), np.array([0, 1], I64)], {}),
    "slice_empty": ("Slice", [np.arange(5, dtype=I64), np.array([4], I64), np.array([1], I64)], {}),
    "tile": ("Tile", [np.array([[1, 2]], I64), np.array([2, 2], I64)], {}),
    "split": ("Split", [np.arange(5, dtype=I64), np.array([2, 3], I64)], {}, 2),
    "split_equal": ("Split", [np.arange(6, dtype=I64)], {}, 3),
}


@pytest.mark.parametrize("case", sorted(FOLD_CASES))
def test_folding_matches_the_reference_evaluator(case, tmp_path):
    op, values, attrs, *n_out = FOLD_CASES[case]
    names = [f"in{i}" if v is not None else "" for i, v in enumerate(values)]
    outputs = [f"out{i}" for i in range(n_out[0] if n_out else 1)]
    node = helper.make_node(op, names, outputs, name="n", **attrs)
    inits = [(n, v) for n, v in zip(names, values) if n]
    reference = model([node], inputs=[], outputs=[(o, None) for o in outputs], initializers=inits)
    for o in reference.graph.output:  # outputs of any element type
        o.type.tensor_type.elem_type = 0
    expected = ReferenceEvaluator(reference).run(None, {})
    consts = folded([node], inits, tmp_path)
    for name, want in zip(outputs, expected):
        got = consts[name]
        assert got.dtype == want.dtype and got.shape == want.shape, (got, want)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("opset", [9, 11])
def test_folding_with_attributes_of_older_opsets(opset, tmp_path):
    """Before opset 10 Slice takes attributes; before 13 Unsqueeze, Squeeze and ReduceSum do."""
    data = np.arange(12, dtype=I64).reshape(3, 4)
    nodes = [helper.make_node("Unsqueeze", ["d"], ["u"], axes=[0]),
             helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
             helper.make_node("ReduceSum", ["s"], ["r"], axes=[1], keepdims=0)]
    if opset < 10:
        nodes.append(helper.make_node("Slice", ["d"], ["sl"], starts=[1], ends=[100], axes=[1]))
    consts = folded(nodes, [("d", data)], tmp_path, opset=opset)
    assert consts["u"].shape == (1, 3, 4) and consts["s"].shape == (3, 4)
    np.testing.assert_array_equal(consts["r"], [6, 22, 38])
    if opset < 10:
        np.testing.assert_array_equal(consts["sl"], data[:, 1:])


# --- the batch symbol ---------------------------------------------------------------------------------

def shape_nodes(*extra):
    return [helper.make_node("Shape", ["x"], ["shape"]), *extra]


def test_batch_flows_through_gather_unsqueeze_concat(tmp_path):
    nodes = shape_nodes(helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
                        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
                        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
                        helper.make_node("Slice", ["shape", "s0", "s2"], ["nc"]),
                        helper.make_node("Gather", ["shape", "one"], ["c"], axis=0),
                        helper.make_node("Cast", ["target"], ["target32"], to=TensorProto.INT32))
    consts = folded(nodes, [("zero", np.array(0, I64)), ("one", np.array(1, I64)), ("axes0", np.array([0], I64)),
                            ("minus1", np.array([-1], I64)), ("s0", np.array([0], I64)),
                            ("s2", np.array([2], I64))], tmp_path)
    assert consts["shape"].dtype == object and list(consts["shape"]) == [BATCH, 3, 4, 4]
    assert consts["n"].item() is BATCH
    assert list(consts["target"]) == [BATCH, -1] and list(consts["nc"]) == [BATCH, 3]
    assert consts["c"].dtype == I64 and consts["c"] == 3  # numbers again once no N is left
    assert list(consts["target32"]) == [BATCH, -1] and consts["target32"][1].dtype == np.int32


@pytest.mark.parametrize("op, other, expected", [
    ("Mul", 1, BATCH), ("Add", 0, BATCH), ("Sub", 0, BATCH), ("Div", 1, BATCH), ("Max", 1, BATCH),
    ("Equal", 0, False), ("Equal", -1, False), ("Greater", 0, True), ("Less", 1, False),
    ("GreaterOrEqual", 1, True), ("LessOrEqual", 0, False),
])
def test_arithmetic_that_leaves_the_batch_unchanged_or_is_known_for_any_batch(op, other, expected, tmp_path):
    nodes = shape_nodes(helper.make_node(op, ["shape", "k"], ["out"]))
    consts = folded(nodes, [("k", np.array(other, I64))], tmp_path)
    assert consts["out"][0] is BATCH if expected is BATCH else consts["out"][0] == expected
    rest = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.floor_divide, "Max": np.maximum,
            "Equal": np.equal, "Greater": np.greater, "Less": np.less, "GreaterOrEqual": np.greater_equal,
            "LessOrEqual": np.less_equal}[op](np.array([3, 4, 4]), other)
    assert list(consts["out"][1:]) == list(rest)


def test_where_and_equal_as_pytorch_writes_expand(tmp_path):
    """x.expand(...) exports as Where(Equal(shape, -1), ones, shape): N is never -1."""
    nodes = shape_nodes(helper.make_node("Equal", ["shape", "m1"], ["eq"]),
                        helper.make_node("ConstantOfShape", ["four"], ["ones"],
                                         value=numpy_helper.from_array(np.array([1], I64))),
                        helper.make_node("Where", ["eq", "ones", "shape"], ["target"]))
    consts = folded(nodes, [("m1", np.array(-1, I64)), ("four", np.array([4], I64))], tmp_path)
    assert list(consts["target"]) == [BATCH, 3, 4, 4]


BATCH_REASON = ("depends on the batch size N, which is known only when the network is compiled; only the batch "
                "dimension may be dynamic, and shape arithmetic may only pass it through unchanged (or export with "
                "a fixed batch size)")


@pytest.mark.parametrize("nodes, inits, reason", [
    ([helper.make_node("Mul", ["shape", "k"], ["out"], name="m")], [("k", np.array(2, I64))],
     f'"m" (Mul): Mul(N, 2) {BATCH_REASON}'),
    ([helper.make_node("Neg", ["shape"], ["out"], name="neg")], [], f'"neg" (Neg): Neg(N) {BATCH_REASON}'),
    ([helper.make_node("ReduceProd", ["shape"], ["out"], name="numel", keepdims=0)], [],
     f'"numel" (ReduceProd): ReduceProd of [N, 3, 4, 4] {BATCH_REASON}'),
    ([helper.make_node("ConstantOfShape", ["shape"], ["out"], name="zeros")], [],
     f'"zeros" (ConstantOfShape): its shape [N, 3, 4, 4] {BATCH_REASON}'),
    ([helper.make_node("Size", ["x"], ["out"], name="size")], [],
     f'"size" (Size): the element count of a tensor the network computes {BATCH_REASON}'),
])
def test_arithmetic_on_the_batch_is_refused(nodes, inits, reason, tmp_path):
    text = import_error(model([*shape_nodes(*nodes), RELU], initializers=inits), tmp_path)
    assert f"1 ONNX node(s) cannot be expressed in cnngraph ({nodes[0].op_type} x1): {reason} (supported ops:" in text


def test_numbers_gives_converters_constants_without_the_batch(tmp_path):
    """imp.numbers: for a converter reading sizes or axes, N is a clear refusal, not a TypeError in int(N)."""
    nodes = shape_nodes(helper.make_node("Resize", ["x", "", "", "shape"], ["up"], name="up"))
    imp = importer(model([*nodes, RELU]), tmp_path)
    imp.consts["shape"] = np.array([BATCH, 3, 8, 8], dtype=object)  # what folding Shape(x) makes
    imp.consts["sizes"] = np.array([2, 3, 8, 8], np.int64)
    with pytest.raises(onnx_import.Unsupported, match=f"its sizes \\[N, 3, 8, 8\\] {BATCH_REASON[:40]}"):
        imp.numbers(imp.nodes[1], 3, "sizes")
    imp.nodes[1].input[3] = "sizes"
    np.testing.assert_array_equal(imp.numbers(imp.nodes[1], 3, "sizes"), [2, 3, 8, 8])
    assert imp.numbers(imp.nodes[1], 2, "scales", optional=True) is None


# --- folding comes first, and is capped -----------------------------------------------------------------

def test_constant_operands_are_folded_never_a_layer(tmp_path):
    """The conv's weight is Mul(w, scale) and its bias Add(b, Div(b, 2)): constants, folded into its weights."""
    w, b = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), np.arange(4, dtype=np.float32)
    nodes = [helper.make_node("Mul", ["w", "scale"], ["ws"], name="scale_w"),
             helper.make_node("Div", ["b", "two"], ["half"], name="half_b"),
             helper.make_node("Add", ["b", "half"], ["bb"], name="b_plus"),
             helper.make_node("Conv", ["x", "ws", "bb"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    m = model(nodes, outputs=[("y", ["N", 4, 4, 4])],
              initializers=[("w", w), ("scale", np.float32(0.5)), ("b", b), ("two", np.float32(2))])
    spec, weights = cnngraph.from_onnx(save(m, tmp_path / "m.onnx"))
    assert [layer.op for layer in spec.layers] == ["conv2d"]
    np.testing.assert_array_equal(weights["conv.weight"], w * np.float32(0.5))
    np.testing.assert_array_equal(weights["conv.bias"], b * 1.5)


BIG = 2**13  # BIG * BIG * 2 > MAX_FOLDED_ELEMENTS
CAP_REASON = (f"more than the {MAX_FOLDED_ELEMENTS:,} cnngraph evaluates (corrupt or hostile file?)")


@pytest.mark.parametrize("node, inits, elements", [
    (helper.make_node("ConstantOfShape", ["s"], ["out"], name="big"), [("s", np.array([BIG, BIG, 2], I64))],
     2 * BIG * BIG),
    (helper.make_node("Expand", ["one", "s"], ["out"], name="big"),
     [("one", np.array([1], I64)), ("s", np.array([2**40], I64))], 2**40),
    (helper.make_node("Range", ["a", "b", "c"], ["out"], name="big"),
     [("a", np.array(0, I64)), ("b", np.array(2**62, I64)), ("c", np.array(1, I64))], 2**62),
    (helper.make_node("Range", ["a", "b", "c"], ["out"], name="big"),
     [("a", np.array(0, np.float32)), ("b", np.array(1, np.float32)), ("c", np.array(1e-9, np.float32))],
     math.ceil(1 / float(np.float32(1e-9)))),
    (helper.make_node("Mul", ["a", "b"], ["out"], name="big"),
     [("a", np.ones((BIG, 1), np.float32)), ("b", np.ones((1, BIG * 4), np.float32))], 4 * BIG * BIG),
    (helper.make_node("Tile", ["a", "s"], ["out"], name="big"), [("a", np.ones((2, 2), I64)),
                                                                  ("s", np.array([2**31, 2**31], I64))], 2**64),
    (helper.make_node("Gather", ["a", "i"], ["out"], name="big"),
     [("a", np.ones((BIG, 1024), np.float32)), ("i", np.zeros((BIG, 4), I64))], BIG * 4 * 1024),
])
def test_folded_tensors_are_capped(node, inits, elements, tmp_path):
    text = import_error(model([node, RELU], initializers=inits), tmp_path)
    assert f'"big" ({node.op_type}): would make a constant of {elements:,} elements at import, {CAP_REASON}' in text


def test_size_preserving_folds_of_large_constants_pass_the_cap(tmp_path, monkeypatch):
    """A weight over the cap, transposed (or cast, reshaped) by the file, is folded: only ops that make
    more than their largest input are capped. Concat(W, W) is one of them."""
    monkeypatch.setattr(onnx_nodes, "MAX_FOLDED_ELEMENTS", 100)
    w = np.random.default_rng(0).standard_normal((20, 30)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], name="t"),
             helper.make_node("Cast", ["wt"], ["wt64"], name="c", to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["wt64"], ["wt32"], name="c32", to=TensorProto.FLOAT),
             helper.make_node("Gemm", ["x", "wt32"], ["y"], name="fc")]
    m = model(nodes, inputs=[("x", ["N", 30])], outputs=[("y", ["N", 20])], initializers=[("w", w)])
    spec, weights = cnngraph.from_onnx(save(m, tmp_path / "m.onnx"))
    assert [layer.op for layer in spec.layers] == ["linear"]
    np.testing.assert_array_equal(weights["fc.weight"], w)
    doubled = model([helper.make_node("Concat", ["w", "w"], ["ww"], name="big", axis=0), RELU],
                    initializers=[("w", w)])
    assert '"big" (Concat): would make a constant of 1,200 elements at import, more than the 600 cnngraph ' \
           "evaluates (corrupt or hostile file?)" in import_error(doubled, tmp_path, "doubled.onnx")


def test_many_folds_of_one_constant_are_capped_in_all(tmp_path, monkeypatch):
    """Fan-out: every Cast copies the weight. In all at most 4x the file's constants (here 4 * 600) are made."""
    monkeypatch.setattr(onnx_nodes, "MIN_FOLD_BUDGET", 1000)
    nodes = [helper.make_node("Cast", ["w"], [f"w{i}"], name=f"cast{i}", to=TensorProto.DOUBLE) for i in range(6)]
    text = import_error(model([*nodes, RELU], initializers=[("w", np.ones((20, 30), np.float32))]), tmp_path)
    assert ('2 ONNX node(s) cannot be expressed in cnngraph (Cast x2): "cast4" (Cast): the constants evaluated at '
            "import would hold more than 2,400 elements in all (corrupt or hostile file?); \"cast5\" (Cast): ") in text


@pytest.mark.parametrize("node, inits, reason", [
    (helper.make_node("Reshape", ["a", "s"], ["out"], name="bad"), [("a", np.arange(6)), ("s", np.array([4], I64))],
     "cannot reshape 6 elements to [4]"),
    (helper.make_node("Concat", ["a", "b"], ["out"], name="bad", axis=0),
     [("a", np.ones((2, 2), I64)), ("b", np.ones((2, 3), I64))], "cannot be evaluated at import: "),
    (helper.make_node("Gather", ["a", "i"], ["out"], name="bad"), [("a", np.arange(3)), ("i", np.array([3], I64))],
     "index [3] is out of range for axis 0 of size 3"),
    (helper.make_node("Range", ["a", "b", "c"], ["out"], name="bad"),
     [("a", np.array(0, I64)), ("b", np.array(5, I64)), ("c", np.array(0, I64))], "its delta is 0"),
    (helper.make_node("Div", ["a", "b"], ["out"], name="bad"), [("a", np.array([1], I64)), ("b", np.array([0], I64))],
     "divides an integer by zero"),
    (helper.make_node("Add", ["a", "b"], ["out"], name="bad"),
     [("a", np.ones(3, I64)), ("b", np.ones(4, I64))], "its inputs of shapes [3], [4] do not broadcast"),
    (helper.make_node("Transpose", ["a"], ["out"], name="bad", perm=[0, 0]), [("a", np.ones((2, 2)))],
     "perm [0, 0] is not a permutation"),
    (helper.make_node("Cast", ["a"], ["out"], name="bad", to=TensorProto.STRING), [("a", np.ones(2))],
     "casting to object is not supported"),
    (helper.make_node("Sqrt", ["a"], ["out"], name="bad"), [("a", np.array([4], I64))],
     "Sqrt takes a floating-point tensor, got int64"),
])
def test_inconsistent_constants_are_one_line(node, inits, reason, tmp_path):
    text = import_error(model([node, RELU], initializers=inits), tmp_path)
    assert f'1 ONNX node(s) cannot be expressed in cnngraph ({node.op_type} x1): "bad" ({node.op_type}): ' in text
    assert reason in text


# --- PyTorch exports ----------------------------------------------------------------------------------------

def torch_export(module, x: np.ndarray, path: Path, opset: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.from_numpy(x),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return path


def rel_err(out, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref))


IMAGE = (2, 4, 6, 6)
TORCH_CASES = {  # id: (forward, children, the layer ops it imports as)
    "view_size0": (lambda m, x: m.fc(x.view(x.size(0), -1)), {"fc": nn.Linear(144, 5)}, ["flatten", "linear"]),
    "reshape_product_of_dims": (lambda m, x: m.fc(x.reshape(x.shape[0], x.shape[1] * x.shape[2] * x.shape[3])),
                                {"fc": nn.Linear(144, 5)}, ["flatten", "linear"]),
    "reshape_floor_div": (lambda m, x: m.fc(x.reshape(x.shape[0], x.shape[1] // 2 * 72)), {"fc": nn.Linear(144, 5)},
                          ["flatten", "linear"]),
    "interpolate_to_size": (lambda m, x: nn.functional.interpolate(m.conv(x), size=(x.shape[2] * 2, x.shape[3] * 3)),
                            {"conv": nn.Conv2d(4, 4, 1)}, ["conv2d", "upsample2d"]),
}


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_shape_arithmetic_from_torch(case, opset, tmp_path):
    forward, children, ops = TORCH_CASES[case]
    torch.manual_seed(0)
    module = Fn(forward, **children).eval()
    x = np.random.default_rng(1).standard_normal(IMAGE).astype(np.float32)
    spec, weights = cnngraph.from_onnx(torch_export(module, x, tmp_path / f"{case}.onnx", opset))
    assert [layer.op for layer in spec.layers] == ops
    y = cnngraph.compile(spec, batch_size=2, device="cpu", weights=weights)(x)
    with torch.no_grad():
        assert rel_err(y, module(torch.from_numpy(x)).numpy()) < 1e-4


@pytest.mark.parametrize("opset", [13, 17])
def test_reshape_target_from_floor_division_is_folded(opset, tmp_path):
    """x.reshape(x.shape[0], x.shape[1] // 2, -1): Shape, Gather, Div, Cast, Unsqueeze, Concat -> [N, 2, -1]."""
    module = Fn(lambda m, x: x.reshape(x.shape[0], x.shape[1] // 2, -1))
    path = torch_export(module, np.zeros(IMAGE, np.float32), tmp_path / "half.onnx", opset)
    imp = Importer(load_model(path), str(path))
    try:
        imp.run()  # what the reshape itself becomes is the reshape converter's business
    except cnngraph.CnnGraphError:
        pass
    (reshape,) = [n for n in imp.nodes if n.op_type == "Reshape"]
    assert list(imp.consts[reshape.input[1]]) == [BATCH, 2, -1]


@pytest.mark.parametrize("opset", [13, 17])
def test_batch_arithmetic_from_torch_is_one_clear_line(opset, tmp_path):
    module = Fn(lambda m, x: x.view(x.size(0) * 4, -1))
    path = torch_export(module, np.zeros(IMAGE, np.float32), tmp_path / "batch.onnx", opset)
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(path)
    text = str(excinfo.value)
    assert f'1 ONNX node(s) cannot be expressed in cnngraph (Mul x1): "/Mul" (Mul): Mul(N, 4) {BATCH_REASON}' in text
    assert "Reshape" not in text.split("(supported ops")[0]  # it reads the blocked target: not blamed


@pytest.mark.parametrize("opset", [13, 17])
def test_one_input_concat_from_torch(opset, tmp_path):
    """torch.cat([x], 1), legal ONNX: x itself, not a concat of one input (a spec the user never wrote)."""
    module = Fn(lambda m, x: m.conv(torch.cat([x], 1)), conv=nn.Conv2d(4, 2, 1))
    x = np.random.default_rng(1).standard_normal(IMAGE).astype(np.float32)
    spec, weights = cnngraph.from_onnx(torch_export(module, x, tmp_path / "cat.onnx", opset))
    assert [layer.op for layer in spec.layers] == ["conv2d"]
    y = cnngraph.compile(spec, batch_size=2, device="cpu", weights=weights)(x)
    with torch.no_grad():
        assert rel_err(y, module(torch.from_numpy(x)).numpy()) < 1e-4


# --- the report ---------------------------------------------------------------------------------------------

def chain(*ops, start="x"):
    """Nodes applying `ops` one after another to `start`, named n0, n1, ...; the last writes y."""
    nodes, t = [], start
    for i, op in enumerate(ops):
        out = "y" if i == len(ops) - 1 else f"t{i}"
        nodes.append(helper.make_node(op, [t], [out], name=f"n{i}"))
        t = out
    return nodes


def test_summary_by_op_type_comes_first_most_frequent_first(tmp_path):
    text = import_error(model(chain("Tan", "Sin", "Cos", "Sin", "Cos", "Sin")), tmp_path)
    assert text.startswith(f"{tmp_path / 'm.onnx'}: 6 ONNX node(s) cannot be expressed in cnngraph "
                           f'(Sin x3, Cos x2, Tan x1): "n0" (Tan): unsupported op; "n1" (Sin): unsupported op; ')


def test_every_op_without_a_converter_is_reported_downstream_of_a_problem(tmp_path):
    """Relu and Sigmoid have converters and read blocked tensors: skipped. Sin, Cos: listed each time."""
    text = import_error(model(chain("Sin", "Relu", "Cos", "Sigmoid", "Sin")), tmp_path)
    assert '3 ONNX node(s) cannot be expressed in cnngraph (Sin x2, Cos x1): "n0" (Sin): unsupported op; ' \
           '"n2" (Cos): unsupported op; "n4" (Sin): unsupported op (supported ops:' in text


def test_pattern_only_ops_are_reported_downstream_of_a_problem(tmp_path, monkeypatch):
    """An op that is a layer only inside a pattern fails on its own whatever it reads (efficientnet's 16
    squeeze-excitation Muls were "1 node" before)."""
    monkeypatch.setitem(onnx_import.CONVERTERS, "Sin", pattern_only("Sin is supported only in a pattern"))
    text = import_error(model(chain("Cos", "Sin", "Sin", "Sin")), tmp_path)
    assert text.count("Sin is supported only in a pattern") == 3
    assert "4 ONNX node(s) cannot be expressed in cnngraph (Sin x3, Cos x1)" in text


def test_shape_arithmetic_reading_a_blocked_tensor_is_not_blamed(tmp_path):
    """Sin blocks; the x.view(x.size(0), -1) arithmetic on its output, the Ceil on that, the Reshape and the
    Gemm after it are not listed: only Sin, and Cos, which no converter takes, wherever it is."""
    nodes = [helper.make_node("Sin", ["x"], ["s"], name="sin"),
             helper.make_node("Shape", ["s"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Cast", ["n"], ["nf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Ceil", ["nf"], ["nc"], name="ceil"),
             helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze"),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["s", "target"], ["flat"], name="reshape"),
             helper.make_node("Gemm", ["flat", "w"], ["g"], name="fc", transB=1),
             helper.make_node("Cos", ["g"], ["y"], name="cos")]
    inits = [("zero", np.array(0, I64)), ("axes0", np.array([0], I64)), ("minus1", np.array([-1], I64)),
             ("w", np.ones((5, 48), np.float32))]
    text = import_error(model(nodes, outputs=[("y", ["N", 5])], initializers=inits), tmp_path)
    assert '2 ONNX node(s) cannot be expressed in cnngraph (Sin x1, Cos x1): "sin" (Sin): unsupported op; ' \
           '"cos" (Cos): unsupported op (supported ops:' in text


def test_shape_arithmetic_op_on_a_computed_tensor_says_so(tmp_path):
    text = import_error(model(chain("Ceil")), tmp_path)
    assert ('"n0" (Ceil): unsupported op on a tensor the network computes (cnngraph evaluates Ceil only on '
            "constants and shapes, as shape arithmetic at import)") in text


def test_a_long_report_summarises_all_and_lists_twenty(tmp_path):
    nodes = [helper.make_node("Sin" if i % 3 else "Cos", ["x"], [f"s{i}"], name=f"u{i}") for i in range(30)]
    nodes.append(helper.make_node("Sum", [f"s{i}" for i in range(30)], ["y"], name="sum"))
    text = import_error(model(nodes), tmp_path)
    assert "30 ONNX node(s) cannot be expressed in cnngraph (Sin x20, Cos x10): " in text
    assert '"u19"' in text and '"u20"' not in text and "; and 10 more (supported ops:" in text


def test_summary_of_many_op_types_is_cut(tmp_path):
    ops = ["Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Erf", "Log",
           "Exp"]
    nodes = [helper.make_node(op, ["x"], [f"s{i}"], name=f"u{i}") for i, op in enumerate(ops)]
    nodes.append(helper.make_node("Sum", [f"s{i}" for i in range(len(ops))], ["y"], name="sum"))
    text = import_error(model(nodes), tmp_path)
    assert ", 2 more op types): " in text


@pytest.mark.parametrize("nodes, phrase", [
    ([helper.make_node("If", ["c"], ["y"], name="branch",
                       then_branch=helper.make_graph([], "t", [], []), else_branch=helper.make_graph([], "e", [], []))],
     '"branch" (If): unsupported op (control flow; export a traced model'),
    ([helper.make_node("DequantizeLinear", ["x", "s"], ["y"], name="dq")],
     '"dq" (DequantizeLinear): unsupported op (a quantized model; export the float32 model)'),
])
def test_hints(nodes, phrase, tmp_path):
    text = import_error(model(nodes, initializers=[("c", np.array(True)), ("s", np.float32(1))]), tmp_path)
    assert phrase in text


def test_dynamic_non_batch_dimension_hint(tmp_path):
    m = model([RELU], inputs=[("x", ["N", 3, "H", "W"])])
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(save(m, tmp_path / "m.onnx"))
    assert str(excinfo.value).endswith('input "x" must have a known shape (N, C, H, W) or (N, F), got (N,3,H,W); '
                                       "only the batch dimension may be dynamic (export with dynamic_axes naming "
                                       "axis 0 only)")


# --- blame: the file's or cnngraph's ----------------------------------------------------------------------

@pytest.mark.parametrize("node, phrase", [
    (helper.make_node("Gather", ["x", "i"], ["y"], name="g", axis="one"),
     "\"g\" (Gather): malformed node (corrupt file?): Mismatched attribute type in 'axis'. Expected: 'INT', "
     "actual: 'STRING'"),
    (helper.make_node("Cast", ["x"], ["y"], name="c"), "\"c\" (Cast): malformed node (corrupt file?): Required "
                                                        "attribute 'to' is missing."),
    (helper.make_node("Conv", ["x"], ["y"], name="conv"), '"conv" (Conv): malformed node (corrupt file?): '
                                                           "the node has input size 1 not in range [min=2, max=3]"),
    (helper.make_node("Relu", ["x"], ["y"], name="r", alpha=1.0), '"r" (Relu): malformed node (corrupt file?): '
                                                                   "Unrecognized attribute: alpha for operator Relu"),
    (helper.make_node("Unsqueeze", ["i"], ["y"], name="u"), '"u" (Unsqueeze): malformed node (corrupt file?): '
                                                             "the node has input size 1 not in range [min=2, max=2]"),
])
def test_malformed_nodes_are_the_files_fault_in_one_line(node, phrase, tmp_path):
    text = import_error(model([node], initializers=[("i", np.array([0], I64))]), tmp_path)
    assert phrase in text


def test_a_long_node_name_is_not_repeated_by_the_checker(tmp_path):
    node = helper.make_node("Conv", ["x"], ["y"], name="c" * 5000)
    text = import_error(model([node]), tmp_path)
    assert len(text) < 2000 and "malformed node" in text


def test_a_converter_failing_on_a_well_formed_node_is_an_internal_error(tmp_path, monkeypatch):
    def buggy(imp, node):
        return {}["oops"]

    monkeypatch.setitem(onnx_import.CONVERTERS, "Relu", buggy)
    with pytest.raises(InternalError) as excinfo:
        cnngraph.from_onnx(save(model([RELU]), tmp_path / "m.onnx"))
    text = str(excinfo.value)
    assert not isinstance(excinfo.value, cnngraph.CnnGraphError)
    assert 'ONNX node "relu" (Relu): importing it failed with KeyError: \'oops\'' in text
    assert "this is a bug in cnngraph: please report it" in text
    assert isinstance(excinfo.value.__cause__, KeyError)  # the traceback shows where


def test_a_converter_failing_on_a_nan_constant_blames_the_constant(tmp_path, monkeypatch):
    def whole_factors(imp, node):  # int(NaN) raises ValueError, as a converter checking for whole factors might
        return [int(v) for v in imp.value(node, 2, "scales")]

    monkeypatch.setitem(onnx_import.CONVERTERS, "Resize", whole_factors)
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="up")
    m = model([node], initializers=[("s", np.array([1, 1, np.nan, 2], np.float32))])
    text = import_error(m, tmp_path)
    assert '"up" (Resize): its constant input "s" holds NaN or infinite values (corrupt file?)' in text


def test_internal_error_exits_1_with_a_traceback_on_the_command_line(tmp_path, monkeypatch, capsys):
    def buggy(imp, node):
        raise AttributeError("no such thing")

    monkeypatch.setitem(onnx_import.CONVERTERS, "Relu", buggy)
    with pytest.raises(InternalError):
        run_main(capsys, "import-onnx", save(model([RELU]), tmp_path / "m.onnx"), "-o", tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_hostile_folding_on_the_command_line_is_one_line(tmp_path, capsys):
    node = helper.make_node("ConstantOfShape", ["s"], ["big"], name="big")
    path = save(model([node, RELU], initializers=[("s", np.array([2**40, 2**40], I64))]), tmp_path / "m.onnx")
    code, out, err = run_main(capsys, "import-onnx", path, "-o", tmp_path / "s.json")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "would make a constant of" in err, err
