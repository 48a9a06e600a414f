"""The command line as a user sees it: validate, inspect (table, JSON, raw, -o), run (random or
given input and weights, --output), schema (and the stale-schema check), and the examples.

Most checks call `cnngraph.cli.main` in-process (quick); a few run the real `python -m cnngraph.cli`
in subprocesses to cover the entry point and the one-line-no-traceback guarantee end to end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnngraph
from cnngraph.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
LENET = ROOT / "examples" / "lenet5.json"
SCHEMA = ROOT / "schemas" / "network.schema.json"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "cnngraph.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def run_main(capsys, *args) -> tuple[int, str, str]:
    """`cnngraph ARGS` in-process: (exit status, stdout, stderr). argparse errors exit via SystemExit."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, *phrases: str) -> None:
    assert code == 2, f"exit {code}; stderr: {err}"
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"expected one line, got {err!r}"
    for phrase in phrases:
        assert phrase in err, f"{phrase!r} not in {err!r}"


# a small network with batch norm and a residual add, so the optimized graph differs from the raw one
SMALL = {
    "format_version": 1, "name": "small",
    "inputs": [{"name": "x", "shape": [3, 8, 8]}],
    "layers": [
        {"op": "conv2d", "name": "conv", "out_channels": 4, "kernel_size": 3, "padding": 1, "bias": False},
        {"op": "batch_norm2d", "name": "bn"},
        {"op": "relu", "name": "act"},
        {"op": "conv2d", "name": "skip", "out_channels": 4, "kernel_size": 1, "inputs": ["x"]},
        {"op": "add", "name": "sum", "inputs": ["act", "skip"]},
        {"op": "global_avg_pool2d", "name": "gap"},
        {"op": "flatten", "name": "flat"},
        {"op": "linear", "name": "fc", "out_features": 5},
    ],
}


@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    return path


# --- validate --------------------------------------------------------------------------------------

def test_validate_ok_line(capsys):
    code, out, err = run_main(capsys, "validate", LENET)
    assert code == 0 and err == ""
    assert out == f"ok: {LENET}: lenet5, 9 layers; output prob (1, 10)\n"


def test_validate_batch(capsys):
    code, out, _ = run_main(capsys, "validate", LENET, "--batch", "4")
    assert code == 0 and "output prob (4, 10)" in out


# --- inspect ---------------------------------------------------------------------------------------

def test_inspect_table_has_rows_and_total(capsys):
    code, out, err = run_main(capsys, "inspect", LENET)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("lenet5")
    assert re.match(r"layer\s+op\s+precision\s+output shape\s+params\s+FLOPs", lines[1])
    for layer in ("c1", "s2", "c3", "s4", "flat", "f5", "f6", "logits", "prob"):
        assert any(layer in line.split()[0].split(",") for line in lines[2:] if line.split()), layer
    total_line = next(line for line in lines if line.startswith("total "))  # memory and fusion follow it
    total = total_line.split()
    nodes = len(cnngraph.compile(LENET, device="cpu").graph)  # 8: both conv+relu+pool fused
    assert total[0] == "total" and total[1] == str(nodes) and total[2] == "nodes"
    params = sum(w.size for w in cnngraph.compile(LENET, device="cpu").weights.values())
    assert f"{params:,}" in total_line  # 61,706 for LeNet-5
    assert "conv2d+relu" in out  # the fused activation is shown


def test_inspect_json_is_the_optimized_graph(capsys, small):
    code, out, _ = run_main(capsys, "inspect", small, "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["name"] == "small" and data["optimized"] is True and data["batch_size"] == 1
    assert data["inputs"] == ["x"] and data["outputs"] == ["fc"]
    nodes = {n["node"]: n for n in data["nodes"]}
    for node in nodes.values():
        assert isinstance(node["op"], str) and isinstance(node["layers"], list)
        assert all(isinstance(d, int) and d > 0 for d in node["shape"])
    covered = sorted(layer for n in data["nodes"] for layer in n["layers"])
    assert covered == sorted(layer["name"] for layer in SMALL["layers"])  # each spec layer exactly once
    assert "bn" not in nodes  # folded into the conv
    assert len(data["nodes"]) < len(SMALL["layers"]) + 1
    assert nodes["fc"]["shape"] == [1, 5]
    assert {n["layout"] for n in nodes.values()} == {"NCHW", None}  # fp32: images NCHW, vectors without one
    assert all((n["layout"] is None) == (len(n["shape"]) != 4) for n in nodes.values())
    assert [p["pass"] for p in data["passes"]]  # the pass log is included


def test_inspect_raw_json_has_one_node_per_layer(capsys, small):
    code, out, _ = run_main(capsys, "inspect", small, "--raw", "--format", "json", "--batch", "3")
    assert code == 0
    data = json.loads(out)
    assert data["optimized"] is False and data["batch_size"] == 3
    nodes = {n["node"]: n for n in data["nodes"]}
    assert set(nodes) == {"x"} | {layer["name"] for layer in SMALL["layers"]}
    assert nodes["bn"]["op"] == "batch_norm2d" and nodes["bn"]["layers"] == ["bn"]
    assert nodes["sum"]["inputs"] == ["act", "skip"] and nodes["sum"]["shape"] == [3, 4, 8, 8]
    assert nodes["flat"]["shape"] == [3, 4]


def test_inspect_raw_table(capsys, small):
    code, out, _ = run_main(capsys, "inspect", small, "--raw")
    assert code == 0
    assert any(line.split()[:2] == ["bn", "batch_norm2d"] for line in out.splitlines())
    assert next(line for line in out.splitlines() if line.startswith("total ")).split()[:3] == ["total", "9", "nodes"]


def test_inspect_output_file(capsys, tmp_path):
    target = tmp_path / "graph.json"
    code, out, err = run_main(capsys, "inspect", LENET, "--format", "json", "-o", target)
    assert code == 0 and out == "" and err == ""
    _, printed, _ = run_main(capsys, "inspect", LENET, "--format", "json")
    assert target.read_text() == printed
    assert [p.name for p in tmp_path.iterdir()] == ["graph.json"]  # no temporary file left behind


def test_inspect_output_into_missing_folder(capsys, tmp_path):
    code, out, err = run_main(capsys, "inspect", LENET, "-o", tmp_path / "nope" / "t.txt")
    assert_one_line_error(code, out, err, "t.txt", "cannot write")


# --- run -------------------------------------------------------------------------------------------

def test_run_lenet_subprocess():
    result = cli("run", "examples/lenet5.json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "network: lenet5" in out and "batch 1" in out and "device cpu" in out
    assert re.search(r"weights: seeded random initialisation \(seed 0\)", out)
    assert "--weights" in out  # says how to use trained ones
    assert "output prob: shape (1, 10)" in out
    top5 = re.search(r"sample 0: top-5 (.*)", out).group(1)
    classes = [int(c) for c in re.findall(r"(\d+) \(", top5)]
    assert len(classes) == 5 and len(set(classes)) == 5 and all(0 <= c < 10 for c in classes)
    assert re.search(r"time: first call [\d.]+ ms, then median [\d.]+ ms", out)


def test_run_input_output_round_trip(capsys, tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_main(capsys, "run", LENET, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
                              "--device", "cpu")
    assert code == 0, err
    assert "batch 3" in out and "saved" in out and "input: seeded" not in out
    y = np.load(tmp_path / "y.npy")
    expected = cnngraph.compile(LENET, batch_size=3, device="cpu", seed=0)(x)
    assert y.dtype == np.float32 and y.shape == (3, 10)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


def test_run_one_sample_input(capsys, tmp_path):
    x = np.random.default_rng(2).standard_normal((1, 32, 32)).astype(np.float32)  # (C, H, W): one sample
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_main(capsys, "run", LENET, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npz")
    assert code == 0, err
    with np.load(tmp_path / "y.npz") as saved:
        assert list(saved.files) == ["prob"]
        np.testing.assert_allclose(saved["prob"], cnngraph.compile(LENET, device="cpu")(x[None]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_run_with_weights_file(capsys, tmp_path, suffix):
    model = cnngraph.compile(LENET, batch_size=2, device="cpu", seed=7)
    weights = tmp_path / f"w{suffix}"
    cnngraph.save_weights(model.weights, weights)
    x = np.random.default_rng(3).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_main(capsys, "run", LENET, "--weights", weights, "--input", tmp_path / "x.npy",
                              "--output", tmp_path / "y.npy")
    assert code == 0, err
    assert "random" not in out  # neither weights nor input were random
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x), rtol=1e-6, atol=1e-7)
    # and the default seed gives different weights, so the file was really used
    assert not np.allclose(np.load(tmp_path / "y.npy"), cnngraph.compile(LENET, batch_size=2, device="cpu")(x))


def test_run_bad_inputs_subprocess(tmp_path):
    """The user's mistakes with input files, through the real entry point: one line, exit 2."""
    np.save(tmp_path / "wrong_shape.npy", np.zeros((2, 3, 32, 32), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((1, 1, 32, 32), np.int64))
    cases = {
        "wrong_shape.npy": ("wrong_shape.npy", "(3, 32, 32)", "(1, 32, 32)"),
        "ints.npy": ("ints.npy", "floating-point", "int64"),
        "missing.npy": ("missing.npy", "No such file"),
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "cnngraph.cli", "run", str(LENET), "--input",
                                     str(tmp_path / name)], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
             for name in cases}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert_one_line_error(proc.returncode, "", err, *cases[name])
        assert out == ""


@pytest.mark.parametrize("make, phrases", [
    (lambda p: np.save(p, np.zeros((1, 3, 32, 32), np.float32)), ("(3, 32, 32)", "needs (1, 32, 32)")),
    (lambda p: np.save(p, np.zeros((1, 32, 32), np.int32)), ("floating-point", "int32")),
    (lambda p: (np.save(p, np.ones((1, 1, 32, 32), np.float32)), p.write_bytes(p.read_bytes()[:-100])),
     ("cannot read", "declares shape (1, 1, 32, 32) (4,096 bytes) but the file holds 3,996 (truncated?)")),
    (lambda p: np.save(p, np.zeros((0, 1, 32, 32), np.float32)), ("no samples",)),
    (lambda p: np.save(p, np.array([object()], dtype=object), allow_pickle=True),
     ("cannot read", "holds Python objects", "never unpickles")),
    (lambda p: p.write_bytes(b"not numpy"), ("cannot read", "not a .npy file")),
    (lambda p: None, ("No such file",)),
    (lambda p: p.write_bytes(negative_dimension_npy()), ("negative dimension", "(-1, 32, 32)")),
    (lambda p: np.savez(open(p, "wb"), x=np.zeros((1, 1, 32, 32), np.float32)), ("not a .npy file",)),
], ids=["wrong_shape", "int32", "truncated", "empty", "object_array", "garbage", "missing", "negative_dim", "npz_named_npy"])
def test_run_bad_input_in_process(capsys, tmp_path, make, phrases):
    path = tmp_path / "x.npy"
    make(path)
    code, out, err = run_main(capsys, "run", LENET, "--input", path)
    assert_one_line_error(code, out, err, "x.npy", *phrases)
    assert "allow_pickle" not in err  # NumPy's advice to unpickle is never passed on
    assert out == ""  # refused before anything ran


def negative_dimension_npy() -> bytes:
    """A .npy file whose header declares shape (-1, 32, 32), padded as np.save pads it."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 32, 32), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(4096)


def test_run_input_that_is_not_npy(capsys, tmp_path):
    (tmp_path / "x.txt").write_text("1 2 3\n")
    code, out, err = run_main(capsys, "run", LENET, "--input", tmp_path / "x.txt")
    assert_one_line_error(code, out, err, "x.txt", "not a .npy file", ".npz")


def test_run_batch_disagrees_with_input(capsys, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 32, 32), np.float32))
    code, out, err = run_main(capsys, "run", LENET, "--input", tmp_path / "x.npy", "--batch", "3")
    assert_one_line_error(code, out, err, "x.npy", "2 samples", "--batch is 3")


def test_run_bad_device_subprocess():
    result = cli("run", "examples/lenet5.json", "--device", "bogus")
    assert_one_line_error(result.returncode, "", result.stderr, "argument --device", "'bogus'", "cuda:N")
    assert result.stdout == ""


@pytest.mark.parametrize("args, phrases", [
    (["--device", "bogus"], ("argument --device: expected one of auto, cpu, cuda, cuda:N", "'bogus'")),
    (["--batch", "0"], ("--batch", "positive integer")),
    (["--weights", "nope.npz"], ("nope.npz", "cannot read weights")),
    (["--weights", "weights.pt"], ("weights.pt", ".npz or .safetensors")),
    (["--output", "y.txt"], ("y.txt", ".npz", ".npy")),
    (["--output", "missing-folder/y.npy"], ("y.npy", "cannot write")),
    (["--max-memory", "1" * 320], ("max_memory", "at most 2**64 bytes")),
    (["--max-memory", "1.5.3GiB"], ("max_memory", "a size like")),
], ids=["device", "batch", "weights_missing", "weights_format", "output_suffix", "output_folder", "memory_digits",
        "memory_format"])
def test_run_bad_options(capsys, tmp_path, monkeypatch, args, phrases):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.pt").write_bytes(b"\x80\x02")
    code, out, err = run_main(capsys, "run", LENET, *args)
    assert_one_line_error(code, out, err, *phrases)
    assert out == ""  # refused before running, not after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]  # nothing written


def test_run_bad_weights_file(capsys, tmp_path):
    weights = cnngraph.compile(LENET, device="cpu").weights
    weights["c1.weight"] = weights["c1.weight"][:, :, :3, :3]
    cnngraph.save_weights(weights, tmp_path / "w.npz")
    code, out, err = run_main(capsys, "run", LENET, "--weights", tmp_path / "w.npz")
    assert_one_line_error(code, out, err, "w.npz", 'layer "c1"', "c1.weight", "(6, 1, 3, 3)", "(6, 1, 5, 5)")


def test_unknown_command_is_one_line(capsys):
    code, out, err = run_main(capsys, "compile-it", LENET)
    assert_one_line_error(code, out, err, "compile-it")


# --- schema ----------------------------------------------------------------------------------------

def test_schema_file_is_up_to_date(capsys):
    """The stale-schema check: the committed schema must equal what the models generate now."""
    code, out, _ = run_main(capsys, "schema")
    assert code == 0
    generated = json.loads(out)
    committed = json.loads(SCHEMA.read_text())
    assert generated == committed, ("schemas/network.schema.json is stale; regenerate it with "
                                    "`cnngraph schema -o schemas/network.schema.json`")
    assert generated["$schema"].startswith("https://json-schema.org/")


def test_schema_output_file(capsys, tmp_path):
    code, out, _ = run_main(capsys, "schema", "-o", tmp_path / "s.json")
    assert code == 0 and out == ""
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(SCHEMA.read_text())


def _schema_validator():
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


def test_schema_flags_a_typo():
    bad = json.loads(LENET.read_text())
    bad["layers"][0]["kernal_size"] = 5
    assert list(_schema_validator().iter_errors(bad)), "an editor using the schema should flag an unknown field"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_schema_accepts_example(path):
    data = json.loads(path.read_text())
    for layer in data["layers"]:  # the shorthand is checked on its own below
        if isinstance(layer.get("activation"), str):
            layer["activation"] = {"op": layer["activation"]}
    errors = list(_schema_validator().iter_errors(data))
    assert not errors, f"{path.name}: {errors[0].message[:300]}"


def test_schema_accepts_activation_shorthand():
    errors = list(_schema_validator().iter_errors(json.loads(LENET.read_text())))
    assert not errors, errors[0].message[:300]


# --- examples --------------------------------------------------------------------------------------

def test_examples_exist():
    assert len(EXAMPLES) >= 5 and LENET in EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_has_schema_and_validates(capsys, path):
    data = json.loads(path.read_text())
    assert "$schema" in data, f"{path.name} has no $schema (editors use it for completion)"
    assert (path.parent / data["$schema"]).resolve() == SCHEMA.resolve()
    code, out, err = run_main(capsys, "validate", path)
    assert code == 0, err
    assert out.startswith(f"ok: {path}: {data['name']}, {len(data['layers'])} layers; output ")


# --- no command overwrites its own input ------------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["inspect", "net.json", "-o", "{out}"], ["export-onnx", "net.json", "-o", "{out}"],
    ["run", "net.json", "--output", "{out}"], ["import-onnx", "m.onnx", "-o", "{out}"]], ids=lambda c: c[0])
@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_an_output_that_is_the_input_is_refused(capsys, tmp_path, monkeypatch, command, alias):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.json").write_bytes(LENET.read_bytes())
    (tmp_path / "m.onnx").write_bytes(b"not an ONNX model, but an input all the same")
    source = command[1]
    out = {"same": source, "symlink": "alias", "hardlink": "alias"}[alias]
    if alias == "symlink":
        os.symlink(source, "alias")
    elif alias == "hardlink":
        os.link(source, "alias")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, out_text, err = run_main(capsys, *[part.format(out=out) for part in command])
    assert_one_line_error(code, out_text, err, "would overwrite the input", source)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing left


def test_codegen_into_the_folder_of_its_spec_is_refused(capsys, tmp_path):
    (tmp_path / "net.json").write_bytes(LENET.read_bytes())
    code, out, err = run_main(capsys, "codegen", tmp_path / "net.json", "-o", tmp_path, "--force")
    assert_one_line_error(code, out, err, "would overwrite the input", "inside", "another folder")
    assert [p.name for p in tmp_path.iterdir()] == ["net.json"]
