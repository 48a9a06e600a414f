"""Each malformed file is refused for its OWN reason (issue 15).

A test that only checks an error's format (one line, exit status 2) also passes when a check is
removed and some later, generic handler refuses the file with another message; or when the file
is silently accepted by a path that was never tested. So every case below names the phrase its
message must contain (the reason, and the array, key or entry it is about), and the error type.

One table, CASES, of files a user can hand to cnngraph:
- weights files (`compile(weights=...)`, `--weights`): each refused with a `WeightsError`;
- input files (`cnngraph run --input`, `cnngraph check --input`): an `InputError`, through the
  reader itself and the command line in-process (exit 2, one line on stderr, nothing written);
- array files given to `predict`: a row whose `error` is the reason, the run going on;
- specs (`load_spec`): a `SpecError`.
A few go through the real entry point too (`python -m cnngraph.cli`), started together.

Reasons already asserted elsewhere are not repeated here: bad specs in test_bad_specs.py,
malformed safetensors headers and damaged .npz archives in test_weights.py and
test_reliability.py, bad `.npy` inputs in test_cli.py, `model(x)` arguments in
test_reliability.py and test_api_arguments.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import cnngraph
from cnngraph.cli import _input_batch, _read_inputs
from cnngraph.cli import main as cli_main
from cnngraph.errors import CnnGraphError, InputError, SpecError, WeightsError
from cnngraph.predict import predict

ROOT = Path(__file__).resolve().parents[1]

# two inputs, so a .npz input can lack one or hold one too many; one conv, so there are weights
TWO = {"format_version": 1, "name": "two", "inputs": [{"name": "a", "shape": [3, 8, 8]}, {"name": "b", "shape": [3, 8, 8]}],
       "layers": [{"op": "add", "name": "s", "inputs": ["a", "b"]},
                  {"op": "conv2d", "name": "c", "out_channels": 2, "kernel_size": 3}]}
ONE = {"format_version": 1, "name": "one", "inputs": [{"name": "x", "shape": [3, 8, 8]}],
       "layers": [{"op": "conv2d", "name": "c", "out_channels": 2, "kernel_size": 3}]}
NETS = {"two": TWO, "one": ONE}
WEIGHTS = {"c.weight": np.ones((2, 3, 3, 3), np.float32), "c.bias": np.ones(2, np.float32)}
SAMPLE = np.zeros((1, 3, 8, 8), np.float32)


# --- making the files ----------------------------------------------------------------------------------

def npz(**arrays) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def npy(array: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.save(path, array, allow_pickle=array.dtype.hasobject)


def weights_file(**changes) -> Callable[[Path], None]:
    """WEIGHTS with `changes` (a key set to None is left out), saved by cnngraph's own writer."""
    def make(path: Path) -> None:
        weights = {**WEIGHTS, **changes}
        cnngraph.save_weights({k: v for k, v in weights.items() if v is not None}, path)
    return make


def safetensors_header(edit: Callable[[str], str]) -> Callable[[Path], None]:
    """A valid safetensors file of WEIGHTS whose JSON header text is rewritten by `edit` (the data
    and the header's length kept right)."""
    def make(path: Path) -> None:
        cnngraph.save_weights(WEIGHTS, path)
        blob = path.read_bytes()
        (length,) = struct.unpack("<Q", blob[:8])
        text = edit(blob[8:8 + length].decode().rstrip()).encode()
        text += b" " * (-len(text) % 8)
        path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + length:])
    return make


def add_metadata(metadata: str) -> Callable[[str], str]:
    return lambda text: '{"__metadata__": ' + metadata + ", " + text[1:]


def repeat_entry(key: str) -> Callable[[str], str]:
    """The header with `key`'s entry written twice (JSON's last-wins rule would keep one silently)."""
    def edit(text: str) -> str:
        entry = json.dumps({key: json.loads(text)[key]}, separators=(",", ":"))[1:-1]
        return text[:-1] + "," + entry + "}"
    return edit


def repeat_field(key: str, field: str, value) -> Callable[[str], str]:
    """`key`'s entry with `field` given twice, the second time as `value`."""
    def edit(text: str) -> str:
        header = json.loads(text)
        entry = json.dumps(header.pop(key), separators=(",", ":"))
        entry = entry[:-1] + f',"{field}":{json.dumps(value)}}}'
        rest = json.dumps(header, separators=(",", ":"))
        return rest[:-1] + f',"{key}":{entry}}}'
    return edit


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_declaring(shape: str) -> bytes:
    """A .npy header (version 1.0, float32) that declares `shape`, padded as np.save pads it."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npz_with_bad_crc(path: Path) -> None:
    """A stored (uncompressed) .npz of WEIGHTS with one data byte of "c.bias" flipped: its CRC-32 fails."""
    blob = bytearray(npz_bytes(**WEIGHTS))
    at = blob.find(b"c.bias.npy") + len("c.bias.npy") + 128 + 4  # past the name and the .npy header
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))


def npz_cut(path: Path) -> None:
    """A .npz cut in half: it begins as a zip, but its directory (at the end) is gone."""
    blob = npz_bytes(**WEIGHTS)
    path.write_bytes(blob[:len(blob) // 2])


def npz_deflate_broken(path: Path) -> None:
    """A compressed .npz whose "c.weight" deflate stream is garbage (the directory intact)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for key, value in WEIGHTS.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, value)
            z.writestr(key + ".npy", member.getvalue())
    blob = bytearray(path.read_bytes())
    at = blob.find(b"c.weight.npy") + len("c.weight.npy")
    blob[at:at + 16] = b"\xff" * 16  # the start of the deflate stream: an invalid block type
    path.write_bytes(bytes(blob))


# --- the table -----------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    kind: str  # "weights", "input" (run --input), "predict" or "spec"
    file: str  # its name: the suffix chooses the reader
    make: Callable[[Path], None]
    error: type[CnnGraphError]
    phrases: tuple[str, ...]  # the reason: every one must be in the message, the first right after where
    net: str = "two"


CASES = [
    # --- weights files: the network's keys, shapes and dtypes, read from the header ------------------
    Case("st_int_dtype", "weights", "w.safetensors", weights_file(**{"c.bias": np.ones(2, np.int32)}), WeightsError,
         ('layer "c"', 'key "c.bias" has dtype int32', "must be floating point")),
    Case("npz_bool_dtype", "weights", "w.npz", weights_file(**{"c.bias": np.ones(2, bool)}), WeightsError,
         ('layer "c"', 'key "c.bias" has dtype bool', "must be floating point")),
    Case("st_wrong_shape", "weights", "w.safetensors", weights_file(**{"c.bias": np.ones(3, np.float32)}),
         WeightsError, ('layer "c"', 'key "c.bias" has shape (3,), expected (2,)')),
    Case("st_missing_key", "weights", "w.safetensors", weights_file(**{"c.bias": None}), WeightsError,
         ('layer "c"', 'missing key "c.bias"', "(expected shape (2,))")),
    Case("npz_extra_key", "weights", "w.npz", weights_file(**{"c.gamma": np.ones(2, np.float32)}), WeightsError,
         ('unexpected key "c.gamma"', "that layer has c.bias, c.weight")),
    Case("npz_float64_beyond_float32", "weights", "w.npz", weights_file(**{"c.bias": np.array([1e300, 0])}),
         WeightsError, ('layer "c"', 'key "c.bias" has float64 values beyond float32\'s range')),
    # --- weights files: the container itself -------------------------------------------------------
    Case("st_metadata_not_strings", "weights", "w.safetensors", safetensors_header(add_metadata('{"epoch": 3}')),
         WeightsError, ("not a valid safetensors file", "__metadata__ must be a JSON object of strings")),
    Case("st_metadata_a_list", "weights", "w.safetensors", safetensors_header(add_metadata('["x"]')),
         WeightsError, ("not a valid safetensors file: __metadata__ must be a JSON object of strings",)),
    Case("st_entry_twice", "weights", "w.safetensors", safetensors_header(repeat_entry("c.bias")), WeightsError,
         ("not a valid safetensors file", 'key "c.bias" appears twice in the header')),
    Case("st_field_twice", "weights", "w.safetensors", safetensors_header(repeat_field("c.bias", "shape", [1, 2])),
         WeightsError, ('not a valid safetensors file: key "shape" appears twice in the header',)),
    Case("npz_bad_crc", "weights", "w.npz", npz_with_bad_crc, WeightsError,
         ('entry "c.bias" is corrupt', "CRC-32")),
    Case("npz_broken_deflate", "weights", "w.npz", npz_deflate_broken, WeightsError,
         ('entry "c.weight" is corrupt',)),
    Case("npz_cut_in_half", "weights", "w.npz", npz_cut, WeightsError,
         ("not a .npz file it can read: a zip archive cut short or corrupt", "truncated?")),
    # --- input files for `run --input` (and `check --input`) ---------------------------------------
    Case("npz_extra_array", "input", "x.npz", npz(a=SAMPLE, b=SAMPLE, c=SAMPLE), InputError,
         ('unexpected array "c"', 'the network\'s inputs are "a", "b"')),
    Case("npz_missing_array", "input", "x.npz", npz(a=SAMPLE), InputError,
         ('missing array "b"', 'the network\'s inputs are "a", "b"', 'the file holds "a"')),
    Case("npz_misnamed_array", "input", "x.npz", npz(a=SAMPLE, B=SAMPLE), InputError,
         ('missing array "b"', 'the file holds "a", "B"')),
    Case("npz_no_arrays", "input", "x.npz", npz(), InputError, ('missing array "a"', "the file holds no arrays")),
    Case("npz_int_array", "input", "x.npz", npz(a=SAMPLE, b=SAMPLE.astype(np.int32)), InputError,
         ('array "b" must hold floating-point numbers', "got int32")),
    Case("npz_complex_array", "input", "x.npz", npz(a=SAMPLE, b=SAMPLE.astype(np.complex64)), InputError,
         ('array "b" must hold floating-point numbers', "got complex64")),
    Case("npz_wrong_shape", "input", "x.npz", npz(a=SAMPLE, b=np.zeros((1, 3, 4, 4), np.float32)), InputError,
         ('array "b" has per-sample shape (3, 4, 4)', 'the network\'s input "b" needs (3, 8, 8)')),
    Case("npz_scalar_array", "input", "x.npz", npz(a=SAMPLE, b=np.float32(1)), InputError,
         ('array "b" holds no samples (shape ())',)),
    Case("npz_batches_disagree", "input", "x.npz", npz(a=SAMPLE, b=np.zeros((2, 3, 8, 8), np.float32)),
         InputError, ('input "b" holds 2 samples but the first input holds 1',)),
    Case("npz_object_array", "input", "x.npz", npz(a=SAMPLE, b=np.array([None, 1], dtype=object)), InputError,
         ('entry "b" holds Python objects', "never unpickles")),
    Case("npz_not_a_zip", "input", "x.npz", lambda p: p.write_bytes(npy_bytes(SAMPLE)), InputError,
         ("not a .npz file",)),
    Case("npy_for_two_inputs", "input", "x.npy", npy(SAMPLE), InputError,
         ("the network has inputs a, b", "give a .npz with one array per name")),
    Case("npz_for_one_input_misnamed", "input", "x.npz", npz(image=SAMPLE), InputError,
         ('missing array "x"', 'the network\'s inputs are "x"', 'the file holds "image"'), net="one"),
    # --- arrays given to predict: a row with the reason, the run goes on ----------------------------
    Case("predict_int_npy", "predict", "x.npy", npy(SAMPLE.astype(np.int64)), InputError,
         ("must hold floating-point numbers", "got int64"), net="one"),
    Case("predict_uint8_npz", "predict", "x.npz", npz(x=SAMPLE.astype(np.uint8)), InputError,
         ("must hold floating-point numbers", "got uint8"), net="one"),
    Case("predict_complex_npy", "predict", "x.npy", npy(SAMPLE.astype(np.complex64)), InputError,
         ("must hold floating-point numbers", "got complex64"), net="one"),
    Case("predict_object_npy", "predict", "x.npy", npy(np.array([None], dtype=object)), InputError,
         ("cannot read a .npy array: it holds Python objects", "never unpickles"), net="one"),
    Case("predict_truncated_npy", "predict", "x.npy", lambda p: (np.save(p, SAMPLE), p.write_bytes(p.read_bytes()[:-8])),
         InputError, ("cannot read a .npy array: its header declares shape (1, 3, 8, 8)", "truncated?"), net="one"),
    Case("predict_negative_dimension_npy", "predict", "x.npy",
         lambda p: p.write_bytes(npy_declaring("(-1, 3, 8)") + bytes(64)), InputError,
         ("cannot read a .npy array: its header declares shape (-1, 3, 8), with a negative dimension",), net="one"),
    # --- specs: checked by the loader, as the Python API raises it -----------------------------------
    Case("spec_bad_json", "spec", "net.json", lambda p: p.write_text('{"format_version": 1, "inputs": [}'), SpecError,
         ("invalid JSON", ":1:")),
    Case("spec_unknown_field", "spec", "net.json",
         lambda p: p.write_text(json.dumps({**ONE, "layers": [{**ONE["layers"][0], "strides": 2}]})), SpecError,
         ('layer "c"', 'unknown field "strides"', 'did you mean "stride"')),
    Case("spec_unknown_op", "spec", "net.json",
         lambda p: p.write_text(json.dumps({**ONE, "layers": [{"op": "conv3d", "name": "c"}]})), SpecError,
         ('layer "c"', 'unknown op "conv3d"', 'did you mean "conv2d"')),
]


def cases(kind: str) -> list:
    return [pytest.param(c, id=c.id) for c in CASES if c.kind == kind]


def test_the_table_is_whole():
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.kind for c in CASES} == {"weights", "input", "predict", "spec"}
    assert all(c.phrases for c in CASES)


def made(case: Case, folder: Path) -> Path:
    path = folder / case.file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # np.save of an object array, zipfile's duplicate name
        case.make(path)
    return path


def assert_reason(message: str, case: Case, where: str = "") -> None:
    """`message` is one line: `where` (the file, and for a spec its line:column), then the reason,
    beginning with the case's first phrase; so a generic handler that wraps the reason ("cannot
    read ...: <reason>") fails, as does one that gives another. Every other phrase is in it too."""
    assert "\n" not in message, f"{case.id}: not one line: {message!r}"
    assert message.startswith(where), f"{case.id}: {message!r} does not begin with {where!r}"
    reason = re.sub(r"^(:\d+:\d+)?: ", "", message[len(where):]) if where else message
    assert reason.startswith(case.phrases[0]), f"{case.id}: the reason {case.phrases[0]!r} is not first in {message!r}"
    for phrase in case.phrases:
        assert phrase in message, f"{case.id}: {phrase!r} not in {message!r}"
    assert "allow_pickle" not in message  # NumPy's advice to unpickle is never passed on


def spec_file(folder: Path, net: str) -> Path:
    path = folder / f"{net}.json"
    path.write_text(json.dumps(NETS[net]))
    return path


# --- weights: the Python API and the command line -------------------------------------------------------

@pytest.mark.parametrize("case", cases("weights"))
def test_weights_file_refused_for_its_reason(case, tmp_path):
    path = made(case, tmp_path)
    with pytest.raises(CnnGraphError) as info:
        cnngraph.compile(NETS[case.net], device="cpu", weights=path)
    assert type(info.value) is case.error, f"{case.id}: {type(info.value).__name__}: {info.value}"
    assert info.value.file == str(path) and str(info.value).startswith(str(path))
    assert_reason(str(info.value), case, str(path))


@pytest.mark.parametrize("case", cases("weights"))
def test_weights_file_through_the_cli(case, tmp_path, capsys):
    path = made(case, tmp_path)
    spec = spec_file(tmp_path, case.net)
    before = sorted(tmp_path.iterdir())
    code = cli_main(["run", str(spec), "--weights", str(path), "--device", "cpu", "--output", str(tmp_path / "y.npy")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert_reason(err[:-1], case, f"error: {path}")
    assert sorted(tmp_path.iterdir()) == before  # no output, no temporary file


# --- inputs: the reader (its error type) and `cnngraph run` / `cnngraph check` ---------------------------

@pytest.mark.parametrize("case", cases("input"))
def test_input_file_refused_for_its_reason(case, tmp_path):
    path = made(case, tmp_path)
    with pytest.raises(CnnGraphError) as info:
        given = _read_inputs(str(path), cnngraph.parse_spec(NETS[case.net]))
        _input_batch(given, None, str(path))
    assert type(info.value) is case.error, f"{case.id}: {type(info.value).__name__}: {info.value}"
    assert info.value.file == str(path)
    assert_reason(str(info.value), case, str(path))


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("case", cases("input"))
def test_input_file_through_the_cli(case, command, tmp_path, capsys):
    path = made(case, tmp_path)
    spec = spec_file(tmp_path, case.net)
    before = sorted(tmp_path.iterdir())
    output = ["--output", str(tmp_path / "y.npz")] if command == "run" else []
    code = cli_main([command, str(spec), "--input", str(path), "--device", "cpu", *output])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert_reason(err[:-1], case, f"error: {path}")
    assert sorted(tmp_path.iterdir()) == before


# --- predict: the bad file is a row with its reason; the good one beside it is predicted -----------------

@pytest.fixture(scope="module")
def one_model():
    return cnngraph.compile(ONE, batch_size=2, device="cpu")


@pytest.mark.parametrize("case", cases("predict"))
def test_predict_array_refused_for_its_reason(case, tmp_path, one_model):
    path = made(case, tmp_path)
    np.save(tmp_path / "good.npy", SAMPLE[0])
    rows = list(predict(one_model, [path, tmp_path / "good.npy"]))
    bad, good = rows[0], rows[-1]
    assert good["error"] is None and good["input"] == str(tmp_path / "good.npy")
    assert len(rows) == 2 and bad["input"].startswith(str(path)) and bad["error"]
    assert_reason(bad["error"], case)


def test_predict_array_error_is_an_input_error(tmp_path):
    from cnngraph.predict import expand_inputs
    np.save(tmp_path / "x.npy", SAMPLE.astype(np.int64))
    (item,) = expand_inputs([tmp_path / "x.npy"], cnngraph.parse_spec(ONE))
    with pytest.raises(InputError, match="must hold floating-point numbers"):
        item.read()


# --- specs: the Python API's type -------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("spec"))
def test_spec_refused_for_its_reason(case, tmp_path):
    path = made(case, tmp_path)
    for call in (cnngraph.load_spec, lambda p: cnngraph.compile(p, device="cpu")):
        with pytest.raises(CnnGraphError) as info:
            call(path)
        assert type(info.value) is case.error, f"{case.id}: {type(info.value).__name__}: {info.value}"
        assert str(info.value).startswith(str(path))
        assert_reason(str(info.value), case, str(path))


# --- `model(x)` with a network of two inputs ---------------------------------------------------------

@pytest.mark.parametrize("given, phrases", [
    (SAMPLE, ("this network has inputs a, b", "pass a dict by name")),
    ({"a": SAMPLE}, ("inputs must be exactly a, b", "got a")),
    ({"a": SAMPLE, "b": SAMPLE, "c": SAMPLE}, ("inputs must be exactly a, b", "got a, b, c")),
    ({"a": SAMPLE, "b": SAMPLE[0]}, ('input "b" must have shape (1, 3, 8, 8)', "got (3, 8, 8)")),
], ids=["one_array", "missing", "extra", "wrong_shape"])
def test_model_call_refused_for_its_reason(given, phrases):
    model = cnngraph.compile(TWO, device="cpu")
    with pytest.raises(CnnGraphError) as info:
        model(given)
    assert type(info.value) is InputError
    for phrase in phrases:
        assert phrase in str(info.value), f"{phrase!r} not in {str(info.value)!r}"


# --- the real entry point: one line, no traceback, nothing written -----------------------------------

SUBPROCESS = {"npz_extra_array": "--input", "npz_int_array": "--input", "st_entry_twice": "--weights",
              "npz_bad_crc": "--weights", "spec_unknown_op": None}


def test_reasons_through_the_real_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    running = {}
    for case in (c for c in CASES if c.id in SUBPROCESS):
        folder = tmp_path / case.id
        folder.mkdir()
        path = made(case, folder)
        spec = path if case.kind == "spec" else spec_file(folder, case.net)
        option = [SUBPROCESS[case.id], str(path)] if SUBPROCESS[case.id] else []
        running[case.id] = (case, folder, path, sorted(folder.iterdir()), subprocess.Popen(
            [sys.executable, "-m", "cnngraph.cli", "run", str(spec), *option, "--device", "cpu",
             "--output", str(folder / "y.npy")], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    assert len(running) == len(SUBPROCESS)
    for case, folder, path, before, proc in running.values():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and out == "" and "Traceback" not in err, f"{case.id}: {proc.returncode} {err}"
        assert err.startswith(f"error: {path}") and err.count("\n") == 1, f"{case.id}: {err!r}"
        assert_reason(err[:-1], case, f"error: {path}")
        assert sorted(folder.iterdir()) == before, case.id
