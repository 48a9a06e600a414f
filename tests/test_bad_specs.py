"""A catalogue of bad specs and what a user sees for each: `cnngraph validate` exits with status 2
and prints exactly one line on stderr (never a traceback) naming the file, the layer and the field,
and saying what would be valid.

Every case runs in-process through `cnngraph.cli.main` (quick), and a dozen cases, one or two of
each kind (bad JSON, Pydantic errors, references, cycles, shapes), also through the real command
line (`python -m cnngraph.cli validate`, one subprocess each, started together) for the
no-traceback guarantee of the entry point itself. A few cases also go through the Python API to
check the error types and their `.layer` / `.field` attributes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import cnngraph
from cnngraph.cli import main

ROOT = Path(__file__).resolve().parents[1]


def net(layers, inputs=None, **top):
    """A minimal spec around `layers`: one 3x32x32 image input unless told otherwise."""
    spec = {"format_version": 1, "inputs": inputs or [{"name": "image", "shape": [3, 32, 32]}], "layers": layers}
    spec.update(top)
    return spec


def conv(name="c1", **fields):
    return {"op": "conv2d", "name": name, "out_channels": 8, "kernel_size": 3, **fields}


def without(spec: dict, key: str) -> dict:
    return {k: v for k, v in spec.items() if k != key}


@dataclass
class Case:
    id: str
    spec: dict | list | str  # a str is written as is (bad JSON and the like)
    expect: tuple[str, ...]  # phrases the one error line must contain (besides the file name)


CASES = [
    # --- not a spec at all ---------------------------------------------------------------------
    Case("bad_json", '{"format_version": 1,\n  "inputs": [}', ("invalid JSON", ":2:14")),
    Case("empty_file", "", ("invalid JSON", ":1:1")),
    Case("top_level_array", [net([conv()])], ("must be a JSON object", "list")),
    Case("nan_literal", '{"format_version": 1, "inputs": [{"name": "v", "shape": [4]}],'
                        ' "layers": [{"op": "dropout", "p": NaN}]}', ("NaN", "finite")),
    Case("infinity_literal", '{"format_version": 1, "inputs": [{"name": "v", "shape": [4]}],'
                             ' "layers": [{"op": "leaky_relu", "negative_slope": -Infinity}]}', ("Infinity",)),
    # --- ops and fields --------------------------------------------------------------------------
    Case("unknown_op", net([{"op": "conv2", "name": "c1", "out_channels": 8}]),
         ('layer "c1"', 'unknown op "conv2"', 'did you mean "conv2d"')),
    Case("missing_op", net([{"name": "c1", "out_channels": 8, "kernel_size": 3}]), ('layer "c1"', 'missing "op"')),
    Case("missing_out_channels", net([{"op": "conv2d", "name": "c1", "kernel_size": 3}]),
         ('layer "c1"', 'field "out_channels"', "missing")),
    Case("kernel_size_string", net([conv(kernel_size="3x3")]), ('layer "c1"', 'field "kernel_size"', "'3x3'")),
    Case("out_channels_float", net([conv(out_channels=3.5)]), ('layer "c1"', 'field "out_channels"', "3.5")),
    Case("typo_kernal_size", net([{"op": "conv2d", "name": "c1", "out_channels": 8, "kernal_size": 3}]),
         ('layer "c1"', 'unknown field "kernal_size"', 'did you mean "kernel_size"')),
    Case("typo_in_activation", net([conv(activation={"op": "leaky_relu", "negative_slop": 0.2})]),
         ('layer "c1"', 'field "activation.negative_slop"', 'did you mean "negative_slope"')),
    Case("unknown_activation", net([conv(activation="relu7")]),
         ('layer "c1"', 'field "activation"', 'unknown op "relu7"', "leaky_relu")),
    Case("gelu_bad_approximate", net([conv(activation={"op": "gelu", "approximate": "fast"})]),
         ('layer "c1"', 'field "activation.approximate"', "'tanh'", "'fast'")),
    Case("unnamed_layer_typo", net([{"op": "max_pool2d", "kernel_siz": 2}]),
         ('layer "max_pool2d_0"', "/layers/0", 'did you mean "kernel_size"')),
    Case("layer_not_an_object", net(["conv2d"]), ("/layers/0", "'conv2d'")),
    Case("inputs_not_a_list", net([conv(inputs="image")]), ('layer "c1"', 'field "inputs"', "valid list")),
    # --- sizes -----------------------------------------------------------------------------------
    Case("out_channels_zero", net([conv(out_channels=0)]), ('layer "c1"', 'field "out_channels"', "got 0")),
    Case("stride_negative", net([conv(stride=-1)]), ('layer "c1"', 'field "stride"', "got -1")),
    Case("kernel_size_pair_zero", net([conv(kernel_size=[0, 3])]), ('layer "c1"', 'field "kernel_size"', "got 0")),
    Case("kernel_size_three_numbers", net([conv(kernel_size=[3, 3, 3])]),
         ('layer "c1"', 'field "kernel_size"', "at most 2")),
    Case("padding_unknown_word", net([conv(padding="samee")]), ('layer "c1"', 'field "padding"', "'same'")),
    Case("padding_negative", net([conv(padding=-1)]), ('layer "c1"', 'field "padding"', "got -1")),
    # reflect padding as large as the side (PyTorch's limit), in H and then in W
    *(Case(f"reflect_pad_{side}", net([{"op": "pad", "name": "p", "mode": "reflect", "padding": padding}],
                                      [{"name": "image", "shape": [3, 4, 6]}]),
           ('layer "p"', 'field "padding"', "reflect padding must be smaller than the input 4x6"))
      for side, padding in (("height", [0, 0, 4, 0]), ("width", [0, 6, 0, 0]))),
    Case("dropout_p_one", net([{"op": "dropout", "name": "drop", "p": 1.0}]), ('layer "drop"', 'field "p"', "less than 1")),
    # --- references ------------------------------------------------------------------------------
    Case("unknown_input_ref", net([conv(inputs=["imag"])]),
         ('layer "c1"', 'field "inputs"', 'unknown input "imag"', 'did you mean "image"')),
    Case("duplicate_layer_name", net([conv(), conv()]), ('layer "c1"', "/layers/1", 'duplicate name "c1"')),
    Case("layer_named_like_input", net([conv(name="image")]),
         ('layer "image"', 'field "name"', "network input")),
    Case("duplicate_input_name", net([conv()], inputs=[{"name": "a", "shape": [3, 8, 8]}] * 2),
         ('duplicate network input name "a"',)),
    Case("cycle", net([conv("a", inputs=["b"]), {"op": "relu", "name": "b", "inputs": ["a"]}, conv("c", inputs=["image"])]),
         ('field "inputs"', "cycle", "a -> b -> a")),
    Case("self_reference", net([conv(inputs=["c1"])]), ('layer "c1"', "cycle", "c1 -> c1")),
    Case("unknown_output", net([conv(), conv("c2")], outputs=["c3"]), ("/outputs", 'unknown output "c3"', "c1, c2")),
    Case("unknown_output_typo", net([conv("conv1")], outputs=["conv_1"]), ('did you mean "conv1"',)),
    Case("add_one_input", net([conv(), {"op": "add", "name": "sum", "inputs": ["c1"]}]),
         ('layer "sum"', 'field "inputs"', "at least 2", "got 1")),
    # --- shapes ----------------------------------------------------------------------------------
    Case("add_mismatched_shapes",
         net([conv("a", out_channels=64, padding=1), conv("b", out_channels=128, stride=2, padding=1, inputs=["image"]),
              {"op": "add", "name": "sum", "inputs": ["a", "b"]}],
             inputs=[{"name": "image", "shape": [3, 56, 56]}]),
         ('layer "sum"', 'field "inputs"', "add needs equal shapes, got (N,64,56,56) and (N,128,28,28)")),
    Case("mul_shapes_that_do_not_broadcast", net([conv("a"), conv("b", out_channels=4, inputs=["image"]),
                                                   {"op": "mul", "name": "m", "inputs": ["a", "b"]}]),
         ('layer "m"', 'field "inputs"', "mul needs shapes that broadcast", "(N,8,30,30) and (N,4,30,30)")),
    Case("reshape_to_another_size", net([{"op": "reshape", "name": "r", "shape": [5, -1, 7]}]),
         ('layer "r"', 'field "shape"', "cannot reshape (N,3,32,32)")),
    Case("concat_mismatched_spatial",
         net([conv("a"), conv("b", stride=2, inputs=["image"]), {"op": "concat", "name": "cat", "inputs": ["a", "b"]}]),
         ('layer "cat"', "concat", "(N,8,30,30)", "(N,8,15,15)")),
    Case("groups_not_dividing_in_channels", net([conv(groups=2, out_channels=4)]),
         ('layer "c1"', 'field "groups"', "groups=2", "3 input channels")),
    Case("groups_not_dividing_out_channels", net([conv(groups=3, out_channels=8)]),
         ('layer "c1"', 'field "groups"', "out_channels=8")),
    Case("kernel_larger_than_input", net([conv(kernel_size=7, padding=1)], inputs=[{"name": "image", "shape": [3, 4, 4]}]),
         ('layer "c1"', 'field "kernel_size"', "7x7", "6x6")),
    Case("linear_on_4d", net([{"op": "linear", "name": "fc", "out_features": 10}]),
         ('layer "fc"', "(N,3,32,32)", "flatten")),
    Case("same_padding_stride_2", net([conv(padding="same", stride=2)]),
         ('layer "c1"', 'field "padding"', "stride 1")),
    Case("pool_padding_over_half_kernel", net([{"op": "max_pool2d", "name": "pool", "kernel_size": 2, "padding": 2}]),
         ('layer "pool"', 'field "padding"', "half the kernel")),
    Case("softmax_axis_0", net([conv(), {"op": "softmax", "name": "sm", "axis": 0}]),
         ('layer "sm"', 'field "axis"', "batch axis")),
    Case("batch_norm_on_2d", net([{"op": "batch_norm2d", "name": "bn"}], inputs=[{"name": "v", "shape": [16]}]),
         ('layer "bn"', "image input", "(N,16)")),
    Case("flatten_then_pool", net([{"op": "flatten", "name": "f"}, {"op": "max_pool2d", "name": "p", "kernel_size": 2}]),
         ('layer "p"', "image input")),
    # --- the top level ---------------------------------------------------------------------------
    Case("empty_layers", net([]), ("/layers", "at least 1")),
    Case("missing_inputs", without(net([conv()]), "inputs"), ("/inputs", "missing")),
    Case("input_shape_two_numbers", net([conv()], inputs=[{"name": "image", "shape": [32, 32]}]),
         ("/inputs/0/shape", "[C, H, W]", "2 numbers")),
    Case("input_shape_zero", net([conv()], inputs=[{"name": "image", "shape": [3, 0, 32]}]), ("/inputs/0/shape", "got 0")),
    Case("format_version_2", {**net([conv()]), "format_version": 2}, ("/format_version", "got 2")),
    Case("format_version_missing", without(net([conv()]), "format_version"), ("/format_version", "missing")),
    Case("extra_top_level_field", {**net([conv()]), "output": ["c1"]},
         ('unknown field "output"', 'did you mean "outputs"', "$schema")),
    Case("outputs_not_a_list", net([conv()], outputs="c1"), ("/outputs", "valid list")),
]


# the cases that also run as real subprocesses (about half a second each)
SUBPROCESS_CASES = [c for c in CASES if c.id in {
    "bad_json", "empty_file", "top_level_array", "nan_literal", "unknown_op", "typo_kernal_size",
    "kernel_size_pair_zero", "typo_in_activation", "cycle", "add_mismatched_shapes", "linear_on_4d",
    "extra_top_level_field"}]


def write(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / f"{case.id}.json"
    path.write_text(case.spec if isinstance(case.spec, str) else json.dumps(case.spec, indent=2))
    return path


def check_one_line(case: Case, path: Path, code: int, out: str, err: str) -> None:
    assert code == 2, f"{case.id}: exit {code}, stderr: {err}"
    assert out == "", f"{case.id}: stdout should be empty, got {out!r}"
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"{case.id}: expected one line, got {err!r}"
    assert path.name in err, f"{case.id}: the file is not named: {err}"
    for phrase in case.expect:
        assert phrase in err, f"{case.id}: {phrase!r} not in {err!r}"


def test_catalogue_is_large_enough():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert len(SUBPROCESS_CASES) == 12


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """The subprocess cases through the real command line, all started at once."""
    folder = tmp_path_factory.mktemp("bad_specs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    running = {}
    for case in SUBPROCESS_CASES:
        path = write(folder, case)
        running[case.id] = (path, subprocess.Popen([sys.executable, "-m", "cnngraph.cli", "validate", str(path)],
                                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                   text=True))
    results = {}
    for case_id, (path, proc) in running.items():
        out, err = proc.communicate(timeout=120)
        results[case_id] = (path, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=lambda c: c.id)
def test_bad_spec_cli(case, cli_results):
    path, code, out, err = cli_results[case.id]
    check_one_line(case, path, code, out, err)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_spec_in_process(case, tmp_path, capsys):
    path = write(tmp_path, case)
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    check_one_line(case, path, code, captured.out, captured.err)


# --- things that look odd but are valid ----------------------------------------------------------

def test_reference_to_a_later_layer_is_allowed_when_acyclic(tmp_path, capsys):
    spec = net([conv("a", inputs=["b"]), {"op": "relu", "name": "b", "inputs": ["image"]}], outputs=["a"])
    path = tmp_path / "forward.json"
    path.write_text(json.dumps(spec))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {path}") and "(1, 8, 30, 30)" in out


# --- the Python API: error types and attributes --------------------------------------------------

def test_api_spec_error_names_layer_and_field():
    with pytest.raises(cnngraph.SpecError) as info:
        cnngraph.parse_spec(net([conv(), conv("c2", kernal_size=3)]))
    err = info.value
    assert isinstance(err, cnngraph.CnnGraphError)
    assert err.layer == "c2" and err.path == "/layers/1" and err.field == "kernal_size"
    assert 'did you mean "kernel_size"' in str(err) and "\n" not in str(err)


def test_api_load_spec_names_the_file(tmp_path):
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(net([conv(activation={"op": "leaky_relu", "negative_slop": 0.1})])))
    with pytest.raises(cnngraph.SpecError) as info:
        cnngraph.load_spec(path)
    assert info.value.file == str(path)
    assert info.value.layer == "c1" and info.value.field == "activation.negative_slop"
    assert str(info.value).startswith(str(path))


def test_api_bad_json_has_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "format_version": 1,\n  "inputs": [,]\n}')
    with pytest.raises(cnngraph.SpecError) as info:
        cnngraph.load_spec(path)
    assert f"{path}:3:" in str(info.value)


@pytest.mark.parametrize("text, key", [
    ('{"format_version": 1, "format_version": 1, "inputs": [{"name": "x", "shape": [4]}], "layers": [{"op": "relu"}]}',
     "format_version"),
    ('{"format_version": 1, "inputs": [{"name": "x", "shape": [4]}], '
     '"layers": [{"op": "linear", "out_features": 3, "out_features": 5}]}', "out_features"),
], ids=["top_level", "in_a_layer"])
def test_a_key_given_twice_is_an_error_naming_it(tmp_path, text, key):
    """JSON's last-wins rule would silently drop the first value: the mistake is reported instead."""
    path = tmp_path / "dup.json"
    path.write_text(text)
    with pytest.raises(cnngraph.SpecError, match=f'key "{key}" appears twice'):
        cnngraph.load_spec(path)


def test_api_model_validator_error_names_field():
    with pytest.raises(cnngraph.SpecError) as info:
        cnngraph.parse_spec(net([conv(groups=3)]))
    assert info.value.layer == "c1" and info.value.field == "groups"


def test_api_shape_error_type_and_attributes():
    spec = net([conv("a"), conv("b", stride=2, inputs=["image"]), {"op": "add", "name": "sum", "inputs": ["a", "b"]}])
    cnngraph.parse_spec(spec)  # well formed: only the shapes are wrong
    with pytest.raises(cnngraph.ShapeError) as info:
        cnngraph.compile(spec, device="cpu")
    err = info.value
    assert not isinstance(err, cnngraph.SpecError) and isinstance(err, cnngraph.CnnGraphError)
    assert err.layer == "sum" and err.field == "inputs" and err.path == "/layers/2"
    assert "add needs equal shapes, got (N,8,30,30) and (N,8,15,15)" in str(err)


def test_api_shape_error_from_file_names_the_file(tmp_path):
    path = tmp_path / "linear.json"
    path.write_text(json.dumps(net([{"op": "linear", "name": "fc", "out_features": 10}])))
    with pytest.raises(cnngraph.ShapeError) as info:
        cnngraph.build(path)
    assert info.value.file == str(path) and info.value.layer == "fc"
    assert "flatten" in str(info.value)


def test_api_cycle_is_a_spec_error():
    with pytest.raises(cnngraph.SpecError) as info:
        cnngraph.build(net([conv("a", inputs=["b"]), {"op": "relu", "name": "b", "inputs": ["a"]}]))
    assert info.value.field == "inputs" and info.value.layer in ("a", "b")


# --- sizes and arguments refused before anything is allocated -------------------------------------

def _tiny(layers, outputs=None):
    spec = {"format_version": 1, "name": "t", "inputs": [{"name": "x", "shape": [3, 8, 8]}], "layers": layers}
    return {**spec, "outputs": outputs} if outputs else spec


@pytest.mark.parametrize("layer, phrase", [
    ({"op": "upsample2d", "name": "u", "scale_factor": 100000}, "its output would have"),
    ({"op": "conv2d", "name": "u", "out_channels": 10**12, "kernel_size": 3}, "would have"),
])
def test_oversized_tensors_are_refused_when_validating(layer, phrase):
    with pytest.raises(cnngraph.ShapeError, match=phrase) as err:
        cnngraph.build(_tiny([layer]))
    assert err.value.layer == "u" and err.value.path == "/layers/0"


def test_outputs_listed_twice_and_bad_compile_arguments():
    with pytest.raises(cnngraph.SpecError, match="listed more than once"):
        cnngraph.parse_spec(_tiny([{"op": "relu", "name": "r"}], outputs=["r", "r"]))
    with pytest.raises(cnngraph.SpecError, match="seed"):
        cnngraph.compile(_tiny([{"op": "relu"}]), seed=-1, device="cpu")
    with pytest.raises(cnngraph.WeightsError, match="file path or a dict"):
        cnngraph.compile(_tiny([{"op": "relu"}]), weights=5, device="cpu")
