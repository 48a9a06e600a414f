"""Hostile and unfaithful ONNX files: what `import-onnx` must refuse, and what it must say.

- External data is read from the model file's folder only: never from the working directory, never
  through `..`, an absolute path or a symlink leading out, never from a FIFO, device or folder, and
  never past the data file's real size; in initializers, Constant values, the tensor attributes of
  any node, subgraphs and sparse initializers alike. Each refusal is one SpecError naming the tensor.
- What cnngraph cannot represent faithfully is refused or noted, never changed silently: float64
  weights beyond float32's range, a Softmax axis out of range, non-finite Resize/Upsample scales,
  integer attributes written as floats, duplicate initializers and outputs are one line; NaN or
  infinite weights are imported with a note (compile refuses them).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import cnngraph  # noqa: E402
from test_cli import assert_one_line_error, run_main  # noqa: E402

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])
WEIGHT = np.arange(9, dtype=np.float32).reshape(3, 3, 1, 1) / 10


def scaled_conv(weight: TensorProto, scale: TensorProto, extra_nodes=(), sparse=()) -> onnx.ModelProto:
    """y = conv(x, weight) * scale, the scale a Constant node's value: external data in both places."""
    nodes = [helper.make_node("Constant", [], ["k"], name="k", value=scale),
             helper.make_node("Conv", ["x", "c.weight"], ["c_out"], name="c"),
             helper.make_node("Mul", ["c_out", "k"], ["y"], name="s"), *extra_nodes]
    graph = helper.make_graph(nodes, "hostile", [X], [Y], initializer=[weight], sparse_initializer=list(sparse))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def inline(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def external(name: str, dims, location: str, offset=None, length=None) -> TensorProto:
    """A float tensor whose bytes the file says are in `location`."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    return tensor


def save(model, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())  # as it is: onnx.save would rewrite external data
    return path


def import_error(path: Path, *phrases: str) -> str:
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(path)
    text = str(excinfo.value)
    assert "\n" not in text and str(path) in text, text
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in {text!r}"
    return text


SECRET = np.full(1, 1234.5, np.float32).tobytes()


# --- external data --------------------------------------------------------------------------------

def test_external_data_beside_the_model_is_read_for_initializers_and_constants(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"pad!" + WEIGHT.tobytes() + np.float32(2).tobytes())
    model = scaled_conv(external("c.weight", [3, 3, 1, 1], "data.bin", offset=4, length=36),
                        external("k", [], "data.bin", offset=40, length=4))
    monkeypatch.chdir(tmp_path)  # the working directory is not the model's folder
    weights = cnngraph.from_onnx(save(model, folder / "m.onnx"))[1]
    np.testing.assert_array_equal(weights["c.weight"], WEIGHT)
    np.testing.assert_array_equal(weights["s"].ravel(), [2, 2, 2])  # the Constant became the scale layer's factor


def test_a_constant_is_never_read_from_the_working_directory(tmp_path, monkeypatch, capsys):
    """The attack: `cnngraph import-onnx ../elsewhere/m.onnx` run where a secret.bin lies."""
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "secret.bin").write_bytes(SECRET)
    path = save(scaled_conv(inline("c.weight", WEIGHT), external("k", [], "secret.bin")),
                tmp_path / "elsewhere" / "m.onnx")
    monkeypatch.chdir(tmp_path / "here")
    import_error(path, 'tensor "k"', "secret.bin", "cannot be read beside the model")
    code, out, err = run_main(capsys, "import-onnx", "../elsewhere/m.onnx", "-o", "net.json")
    assert_one_line_error(code, out, err, 'tensor "k"', "secret.bin")
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["secret.bin"]  # nothing written


def outside_locations(tmp_path: Path) -> dict[str, str]:
    """id -> a location that leads out of the model's folder tmp_path/model (each points to a real file)."""
    (tmp_path / "secret.bin").write_bytes(SECRET)
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "link.bin").symlink_to(tmp_path / "secret.bin")
    (folder / "uplink").symlink_to(tmp_path)
    return {"dotdot": "../secret.bin", "sub_dotdot": "sub/../../secret.bin", "absolute": str(tmp_path / "secret.bin"),
            "symlink_out": "link.bin", "folder_symlink_out": "uplink/secret.bin", "dev_zero": "/dev/zero",
            "proc": "/proc/self/environ"}


@pytest.mark.parametrize("case", ["dotdot", "sub_dotdot", "absolute", "symlink_out", "folder_symlink_out",
                                  "dev_zero", "proc"])
@pytest.mark.parametrize("where", ["initializer", "constant"])
def test_external_data_outside_the_models_folder_is_refused(case, where, tmp_path):
    location = outside_locations(tmp_path)[case]
    weight, scale = inline("c.weight", WEIGHT), inline("k", 2)
    if where == "initializer":
        weight = external("c.weight", [3, 3, 1, 1], location, length=36)
    else:
        scale = external("k", [], location, length=4)
    path = save(scaled_conv(weight, scale), tmp_path / "model" / "m.onnx")
    import_error(path, f'tensor "{weight.name if where == "initializer" else "k"}"', "outside the model's folder")


def test_a_symlink_that_stays_inside_the_folder_is_followed(tmp_path):
    folder = tmp_path / "model"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "w.bin").write_bytes(WEIGHT.tobytes())
    (folder / "w.bin").symlink_to(folder / "weights" / "w.bin")
    path = save(scaled_conv(external("c.weight", [3, 3, 1, 1], "w.bin"), inline("k", 2)), folder / "m.onnx")
    np.testing.assert_array_equal(cnngraph.from_onnx(path)[1]["c.weight"], WEIGHT)


def special_file(folder: Path, kind: str) -> str:
    """A location in `folder` that is not a regular file."""
    target = folder / kind
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    return kind


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_external_data_that_is_not_a_regular_file_is_refused_without_blocking(kind, tmp_path):
    location = special_file(tmp_path, kind)
    path = save(scaled_conv(external("c.weight", [3, 3, 1, 1], location, length=36), inline("k", 2)),
                tmp_path / "m.onnx")
    import_error(path, 'tensor "c.weight"', "not a regular file")


@pytest.mark.parametrize("offset, length, reason", [
    (0, 1 << 40, "asks for bytes 0 to 1,099,511,627,776"), (1 << 62, 4, "which holds 36"),
    (32, 8, "asks for bytes 32 to 40"), (-4, 4, "negative"), (0, -1, "negative"),
    ("x", 4, "not a whole number"), (0, "1e3", "not a whole number")])
def test_external_data_past_the_files_real_size_is_refused(offset, length, reason, tmp_path):
    (tmp_path / "w.bin").write_bytes(WEIGHT.tobytes())
    path = save(scaled_conv(external("c.weight", [3, 3, 1, 1], "w.bin", offset, length), inline("k", 2)),
                tmp_path / "m.onnx")
    import_error(path, 'tensor "c.weight"', reason)


def test_external_data_without_a_location_or_with_a_missing_file_is_refused(tmp_path):
    nameless = external("c.weight", [3, 3, 1, 1], "")
    import_error(save(scaled_conv(nameless, inline("k", 2)), tmp_path / "a.onnx"), "names no location")
    missing = external("c.weight", [3, 3, 1, 1], "gone.bin")
    import_error(save(scaled_conv(missing, inline("k", 2)), tmp_path / "b.onnx"), "gone.bin", "cannot be read")
    nul = external("c.weight", [3, 3, 1, 1], "w\0.bin")
    import_error(save(scaled_conv(nul, inline("k", 2)), tmp_path / "c.onnx"), 'tensor "c.weight"')


def test_a_data_file_too_short_for_its_tensor_is_one_line(tmp_path):
    (tmp_path / "w.bin").write_bytes(WEIGHT.tobytes()[:20])
    path = save(scaled_conv(external("c.weight", [3, 3, 1, 1], "w.bin"), inline("k", 2)), tmp_path / "m.onnx")
    import_error(path, "c.weight")


@pytest.mark.parametrize("where", ["attribute", "subgraph", "sparse"])
def test_external_data_anywhere_in_the_model_is_confined(where, tmp_path):
    """Tensors the importer never converts are checked too: no tensor of the file is read from outside."""
    (tmp_path / "secret.bin").write_bytes(SECRET * 16)
    outside = external("hidden", [1], "../secret.bin", length=4)
    extra, sparse = [], []
    if where == "attribute":  # a ConstantOfShape's fill value
        extra = [helper.make_node("ConstantOfShape", ["shape"], ["filled"], name="fill", value=outside)]
    elif where == "subgraph":
        body = helper.make_graph([], "body", [], [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1])],
                                 initializer=[outside])
        extra = [helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=body, else_branch=body)]
    else:
        sparse = [helper.make_sparse_tensor(outside, numpy_helper.from_array(np.array([0], np.int64), "i"), [4])]
    path = save(scaled_conv(inline("c.weight", WEIGHT), inline("k", 2), extra, sparse), tmp_path / "model" / "m.onnx")
    import_error(path, 'tensor "hidden"', "outside the model's folder")


# --- faithfulness ---------------------------------------------------------------------------------

ANY = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)


def hand(nodes, initializers=(), outputs=(Y,), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hand", [X], list(outputs), initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8 if opset >= 13 else 3)


def conv(**attributes):
    return helper.make_node("Conv", ["x", "c.weight"], ["y"], name="c", **attributes)


def with_attribute(node, name: str, value):
    """`node` with an attribute set as given (helper.make_node would keep the type the schema wants)."""
    node.attribute.append(helper.make_attribute(name, value))
    return node


FLOAT64_MAX = float(np.finfo(np.float32).max) * 4
UNFAITHFUL = {  # id: (model, phrases of the one-line error)
    "float64_beyond_float32": (hand([conv()], [numpy_helper.from_array(np.full((3, 3, 1, 1), FLOAT64_MAX), "c.weight")]),
                               ["its weight holds float64 values beyond float32's range"]),
    "float64_beyond_float32_in_a_scale": (
        hand([helper.make_node("Mul", ["x", "k"], ["y"], name="s")],
             [numpy_helper.from_array(np.array([1.0, 2.0, -FLOAT64_MAX]).reshape(3, 1, 1), "k")]),
        ["beyond float32's range"]),
    "softmax_axis_too_large": (hand([helper.make_node("Softmax", ["x"], ["y"], name="s", axis=4)]),
                               ["axis 4 is out of range for a tensor of rank 4; valid: -4..3"]),
    "softmax_axis_too_small": (hand([helper.make_node("Softmax", ["x"], ["y"], name="s", axis=-5)]),
                               ["axis -5 is out of range"]),
    "softmax_axis_opset_11": (hand([helper.make_node("Softmax", ["x"], ["y"], name="s", axis=9)], opset=11),
                              ["axis 9 is out of range"]),
    "resize_infinite_scale": (hand([helper.make_node("Resize", ["x", "", "sc"], ["y"], name="r")],
                                   [numpy_helper.from_array(np.array([1, 1, np.inf, 2], np.float32), "sc")], (ANY,)),
                              ['"r" (Resize)', "not all finite"]),
    "resize_nan_scale": (hand([helper.make_node("Resize", ["x", "", "sc"], ["y"], name="r")],
                              [numpy_helper.from_array(np.array([1, 1, 2, np.nan], np.float32), "sc")], (ANY,)),
                         ["not all finite"]),
    "upsample_infinite_scale_attribute": (
        hand([helper.make_node("Upsample", ["x"], ["y"], name="u", scales=[1.0, 1.0, float("inf"), 2.0])],
             outputs=(ANY,), opset=7),
        ['"u" (Upsample)', "not all finite"]),
    "float_strides": (hand([with_attribute(conv(), "strides", [1.0, 1.0])], [inline("c.weight", WEIGHT)]),
                      ["Mismatched attribute type in 'strides'"]),
    "float_group": (hand([with_attribute(conv(), "group", 1.0)], [inline("c.weight", WEIGHT)]),
                    ["Mismatched attribute type in 'group'"]),
    "float_softmax_axis": (hand([with_attribute(helper.make_node("Softmax", ["x"], ["y"], name="s"), "axis", 1.0)]),
                           ["Mismatched attribute type in 'axis'"]),
    "duplicate_initializer": (hand([conv()], [inline("c.weight", WEIGHT), inline("c.weight", 2 * WEIGHT)]),
                              ['initializer "c.weight" is given twice']),
    "duplicate_output": (hand([conv()], [inline("c.weight", WEIGHT)], outputs=(Y, Y)),
                         ['output "y": the same tensor as output "y"']),
}


@pytest.mark.parametrize("case", UNFAITHFUL)
def test_what_cannot_be_imported_faithfully_is_one_line(case, tmp_path, capsys):
    model, phrases = UNFAITHFUL[case]
    path = save(model, tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw RuntimeWarning (overflow in a cast) on the way
        import_error(path, *phrases)
    code, out, err = run_main(capsys, "import-onnx", path, "-o", tmp_path / "net.json")
    assert_one_line_error(code, out, err, *phrases)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_float64_weights_up_to_float32s_largest_value_are_imported(tmp_path):
    """The bound is inclusive: float32's largest value itself converts exactly."""
    largest = float(np.finfo(np.float32).max)
    weight = np.full((3, 3, 1, 1), largest) * np.array([1, -1, 0.5]).reshape(3, 1, 1, 1)
    path = save(hand([conv()], [numpy_helper.from_array(weight, "c.weight")]), tmp_path / "m.onnx")
    weights = cnngraph.from_onnx(path)[1]
    assert weights["c.weight"].dtype == np.float32 and np.array_equal(weights["c.weight"], weight.astype(np.float32))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_imported_with_a_note(value, tmp_path, capsys):
    weight = WEIGHT.copy()
    weight[0, 1, 0, 0] = value
    path = save(hand([conv()], [inline("c.weight", weight)]), tmp_path / "m.onnx")
    with pytest.warns(cnngraph.CnnGraphWarning, match='weight "c.weight" holds 1 NaN or infinite value'):
        weights = cnngraph.from_onnx(path)[1]
    np.testing.assert_array_equal(weights["c.weight"], weight)  # as the file has them
    code, out, err = run_main(capsys, "import-onnx", path, "-o", tmp_path / "net.json")
    assert code == 0 and err.count("note: ") == 1 and "compile refuses non-finite weights" in err, err
