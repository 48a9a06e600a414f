"""The Python API's promise for bad arguments: every public entry point refuses a value of the wrong
type or range with a `CnnGraphError` whose message is one line, never a TypeError, AttributeError,
ValueError, RuntimeError or OverflowError from deep inside, and never a half-written file.

First a table of the odd calls found by hand (each a case that failed before its fix), then a
Hypothesis property that throws values of every kind at every argument of every entry point.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnngraph

TINY = {"format_version": 1, "name": "tiny", "inputs": [{"name": "x", "shape": [2, 4, 4]}],
        "layers": [{"op": "conv2d", "name": "c", "out_channels": 3, "kernel_size": 3, "padding": 1},
                   {"op": "relu", "name": "r"}]}
X = np.ones((1, 2, 4, 4), np.float32)


@pytest.fixture(scope="module")
def model():
    return cnngraph.compile(TINY, device="cpu")


@pytest.fixture(scope="module")
def weights(model):
    return dict(model.weights)


def assert_refused(call, error=cnngraph.CnnGraphError, *phrases: str) -> cnngraph.CnnGraphError:
    with pytest.raises(cnngraph.CnnGraphError) as excinfo:
        call()
    err = excinfo.value
    assert isinstance(err, error), f"{type(err).__name__}: {err}"
    assert "\n" not in str(err) and len(str(err)) < 400, str(err)
    for phrase in phrases:
        assert phrase in str(err), f"{phrase!r} not in {str(err)!r}"
    return err


# --- the odd calls found by hand ---------------------------------------------------------------

@pytest.mark.parametrize("spec, phrase", [
    (None, "got NoneType"), (42, "got int"), ([1, 2], "got list"), (b'{"format_version": 1}', "decode the bytes"),
    (bytearray(b"{}"), "got bytearray"), (3.5, "got float")])
def test_a_spec_of_the_wrong_type(spec, phrase):
    for entry in (cnngraph.compile, cnngraph.plan, cnngraph.build):
        assert_refused(lambda: entry(spec), cnngraph.SpecError, "a spec must be a NetworkSpec", phrase)


@pytest.mark.parametrize("path, phrase", [(None, "got NoneType"), (42, "got int"), (b"net.json", "got bytes"),
                                          ("net\0.json", "NUL character")])
def test_a_file_path_of_the_wrong_type(tmp_path, weights, path, phrase):
    assert_refused(lambda: cnngraph.load_spec(path), cnngraph.SpecError, "spec file must be a path", phrase)
    assert_refused(lambda: cnngraph.from_onnx(path), cnngraph.SpecError, "ONNX model must be a file path", phrase)
    assert_refused(lambda: cnngraph.load_weights(path), cnngraph.WeightsError, "file path or a dict", phrase)
    assert_refused(lambda: cnngraph.save_weights(weights, path), cnngraph.WeightsError, "must be a path", phrase)
    assert_refused(lambda: cnngraph.export_onnx(TINY, path), cnngraph.CnnGraphError, "must be a path", phrase)


@pytest.mark.parametrize("change, phrases", [
    (lambda w: {1: w["c.weight"], **w}, ("keys must be strings", "got 1")),
    (lambda w: {**w, "c.bias": [[1.0, 2.0], [3.0]]}, ('"c.bias"', "not an array of numbers")),
    (lambda w: {**w, "c.bias": None}, ('"c.bias"', "Python objects")),
    (lambda w: {**w, "c.bias": np.array([object()] * 3)}, ('"c.bias"', "Python objects")),
], ids=["non_string_key", "ragged", "none", "object_array"])
def test_a_weights_mapping_that_is_not_arrays_by_name(weights, change, phrases):
    bad = change(weights)
    assert_refused(lambda: cnngraph.compile(TINY, device="cpu", weights=bad), cnngraph.WeightsError, *phrases)
    assert_refused(lambda: cnngraph.weights_from_torch(bad), cnngraph.WeightsError, *phrases)


def test_torch_parameters_that_require_grad_are_detached(weights):
    """`dict(module.named_parameters())` holds tensors that require grad: taken as a state_dict is."""
    tensors = {key: torch.tensor(value, requires_grad=True) for key, value in weights.items()}
    y = cnngraph.compile(TINY, device="cpu", weights=tensors)(X)
    np.testing.assert_array_equal(y, cnngraph.compile(TINY, device="cpu", weights=weights)(X))
    assert np.array_equal(cnngraph.weights_from_torch(tensors)["c.weight"], weights["c.weight"])


def test_save_weights_refuses_object_arrays_and_writes_nothing(tmp_path):
    for suffix in (".npz", ".safetensors"):
        for bad in ({"a": np.array([{"x": 1}], dtype=object)}, {"a": [[1], [1, 2]]}, {3: np.zeros(2)}):
            assert_refused(lambda: cnngraph.save_weights(bad, tmp_path / f"w{suffix}"), cnngraph.WeightsError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("x, phrase", [({1: X}, "got 1"), ({None: X}, "got None"), ({"x": X, 2.5: X}, "2.5")])
def test_model_inputs_keyed_by_non_strings(model, x, phrase):
    assert_refused(lambda: model(x), cnngraph.InputError, "inputs must be exactly x", phrase)


@pytest.mark.parametrize("limit, phrase", [
    ("1" * 400, "at most 2**64 bytes"), (10**400, "at most 2**64 bytes"), ("9" * 100_000, "at most 2**64 bytes"),
    (0, "at least 1 byte"), ("x" * 10_000, "characters)")], ids=["400_digits", "10**400", "100k_digits", "0", "10k_x"])
def test_max_memory_out_of_range(limit, phrase):
    assert_refused(lambda: cnngraph.compile(TINY, device="cpu", max_memory=limit), cnngraph.SpecError,
                   "max_memory", phrase)


def test_the_largest_max_memory_is_taken():
    assert cnngraph.compile(TINY, device="cpu", max_memory=2**64).memory.total > 0


def test_other_entry_point_arguments(tmp_path):
    assert_refused(lambda: cnngraph.export_onnx(TINY, tmp_path / "m.onnx", weights=[1, 2]), cnngraph.WeightsError,
                   "file path or a dict", "got list")
    assert_refused(lambda: cnngraph.export_onnx(TINY, tmp_path / "m.onnx", seed=-1), cnngraph.SpecError, "seed")
    assert_refused(lambda: cnngraph.export_onnx(TINY, tmp_path / "m.onnx", seed="7"), cnngraph.SpecError, "seed")
    assert_refused(lambda: cnngraph.bind(None), cnngraph.SpecError, "bind takes a Plan", "got NoneType")
    assert_refused(lambda: cnngraph.bind(TINY), cnngraph.SpecError, "bind takes a Plan", "got dict")
    assert list(tmp_path.iterdir()) == []


# --- every argument of every entry point, with values of every kind -----------------------------

def path_text():
    """Names without a folder separator: whatever the property writes stays in its own folder."""
    return st.text(st.characters(blacklist_characters="/\\", blacklist_categories=("Cs",)), max_size=12)


def odd_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**80, 2**80), st.floats(),
                        st.complex_numbers(), path_text(), st.binary(max_size=8), st.just(10**400),
                        st.just("1" * 400), st.just(object()), st.just(Path("missing.json")),
                        st.sampled_from(["cpu", "auto", "opencl", "8GiB", "tiny.json", "w.npz", "w.safetensors",
                                         "m.onnx", "\0", "x" * 500]))
    arrays = st.one_of(
        st.sampled_from([np.float64, np.float32, np.float16, np.int8, np.bool_, np.complex64]).map(
            lambda dtype: np.ones((1, 2, 4, 4), dtype)),
        st.sampled_from([(), (0,), (3,), (1, 2, 4), (2, 2, 4, 4), (1, 2, 4, 4), (3, 2, 3, 3)]).map(
            lambda shape: np.full(shape, np.nan, np.float32)),
        st.just(np.array([object()], dtype=object)),
        st.just(torch.ones(1, 2, 4, 4, requires_grad=True)), st.just(np.zeros((1, 2, 4, 4), np.float32).T))
    keys = st.one_of(st.sampled_from(["x", "c.weight", "c.bias", "c.running_mean", "format_version"]),
                     st.integers(-2, 2), st.none(), st.floats(allow_nan=True), st.binary(max_size=3))
    return st.recursive(st.one_of(scalars, arrays),
                        lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                                                st.dictionaries(keys, inner, max_size=3)),
                        max_leaves=6)


A_PLAN = object()  # stands for cnngraph.plan(TINY), made at each call
ENTRY_POINTS = {  # name -> (call with keyword arguments, the arguments a valid call passes; files in ..)
    "load_spec": (cnngraph.load_spec, {"path": "../tiny.json"}),
    "parse_spec": (cnngraph.parse_spec, {"data": TINY}),
    "build": (cnngraph.build, {"spec": TINY, "batch_size": 1}),
    "plan": (cnngraph.plan, {"spec": TINY, "batch_size": 1, "weights": None, "seed": 0, "optimize": True}),
    "compile": (cnngraph.compile, {"spec": TINY, "batch_size": 1, "device": "cpu", "weights": None, "seed": 0,
                                   "optimize": True, "cuda_graph": True, "autotune": False, "max_memory": None,
                                   "precision": "fp32"}),
    "bind": (lambda p, device, max_memory: cnngraph.bind(cnngraph.plan(TINY) if p is A_PLAN else p, device, max_memory),
             {"p": A_PLAN, "device": "cpu", "max_memory": None}),
    "call": (lambda x: cnngraph.compile(TINY, device="cpu")(x), {"x": X}),
    "load_weights": (cnngraph.load_weights, {"source": "../w.npz"}),
    "save_weights": (cnngraph.save_weights, {"weights": {"c.bias": np.zeros(3)}, "path": "out.npz"}),
    "weights_from_torch": (cnngraph.weights_from_torch, {"state_dict": {}}),
    "from_onnx": (cnngraph.from_onnx, {"path": "../m.onnx"}),
    "export_onnx": (cnngraph.export_onnx, {"spec": TINY, "path": "out.onnx", "weights": None, "seed": 0}),
    "predict": (lambda **kw: list(cnngraph.predict(**kw)),
                {"spec": TINY, "inputs": ["../x.npy"], "weights": None, "batch_size": 2, "device": "cpu", "top": 3,
                 "workers": 2, "precision": "fp32", "skip": ()}),
}
CALLS = [(name, arg) for name, (_, args) in ENTRY_POINTS.items() for arg in args]


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights) -> Path:
    """A folder with a valid spec, weights and ONNX model (for the arguments not being varied) and a
    folder "out" in it, where the calls run, so that whatever they write cannot replace those."""
    folder = tmp_path_factory.mktemp("api")
    (folder / "out").mkdir()
    (folder / "tiny.json").write_text(cnngraph.spec.spec_json(cnngraph.parse_spec(TINY)))
    cnngraph.save_weights(weights, folder / "w.npz")
    cnngraph.save_weights(weights, folder / "w.safetensors")
    cnngraph.export_onnx(TINY, folder / "m.onnx")
    np.save(folder / "x.npy", X)
    return folder


def test_every_argument_of_every_entry_point(files):
    previous = os.getcwd()
    os.chdir(files / "out")
    try:
        _bad_arguments_are_one_line_errors()
    finally:
        os.chdir(previous)


@settings(derandomize=True, deadline=None, max_examples=300, database=None, print_blob=False,
          suppress_health_check=list(HealthCheck))
@given(call=st.sampled_from(CALLS), value=odd_values())
def _bad_arguments_are_one_line_errors(call, value):
    name, arg = call
    function, args = ENTRY_POINTS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cnngraph.CnnGraphWarning)  # float64 weights converted, NaN inputs
        try:
            function(**{**args, arg: value})
        except cnngraph.CnnGraphError as err:
            assert "\n" not in str(err)
