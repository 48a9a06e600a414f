"""`cnngraph codegen SPEC -o DIR`: one self-contained kernel file per launch plus manifest.json, written
into a temporary folder and renamed into place. Each .cu compiles alone with NVRTC and each .cl
builds alone with PyOpenCL (skipped with the reason when either is missing); a non-empty DIR is
refused unless --force; a failure leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cnngraph
from cnngraph.codegen.lower import lower
from test_cli import assert_one_line_error, cli, run_main

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "examples" / "lenet5.json"


def _nvrtc_reason() -> str | None:
    try:
        from cnngraph.codegen.nvrtc import compile_cuda
        compile_cuda('extern "C" __global__ void probe(float* a) { a[0] = 1.0f; }')
    except Exception as err:  # no cuda-bindings, no NVRTC library
        return f"NVRTC unavailable: {err}"
    return None


def _opencl_context():
    try:
        import pyopencl as cl
        return cl.create_some_context(interactive=False), None
    except Exception as err:  # no pyopencl, no platform, no device
        return None, f"no OpenCL device: {err}"


def codegen(capsys, out: Path, *args) -> dict:
    code, stdout, err = run_main(capsys, "codegen", LENET, "-o", out, *args)
    assert code == 0, err
    assert stdout.startswith("wrote ") and stdout.endswith(f"kernels and manifest.json to {out}\n")
    return json.loads((out / "manifest.json").read_text())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- what is written -------------------------------------------------------------------------------

@pytest.mark.parametrize("dialect, suffix", [("cuda", ".cu"), ("opencl", ".cl")])
def test_one_file_per_launch_and_a_manifest(capsys, tmp_path, dialect, suffix):
    out = tmp_path / "kernels"
    manifest = codegen(capsys, out, "--dialect", dialect, "--batch", "2")
    program = lower(cnngraph.compile(LENET, batch_size=2, device="cpu").graph)
    assert [l["kernel"] for l in manifest["launches"]] == [l.kernel for l in program.launches]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{l.kernel}{suffix}" for l in program.launches] +
                                                           ["manifest.json"])
    assert manifest["dialect"] == dialect and manifest["batch"] == 2 and manifest["name"] == "lenet5"
    assert manifest["arena_size"] == program.arena_size and manifest["workspace_size"] == program.workspace_size
    assert manifest["counters_size"] == program.counters_size > 0 and manifest["unit"] == "float32 elements"
    assert set(manifest["inputs"]) == {"image"} and set(manifest["outputs"]) == {"prob"}
    assert manifest["inputs"]["image"]["shape"] == [2, 1, 32, 32]
    for entry, launch in zip(manifest["launches"], program.launches):
        assert entry["file"] == f"{launch.kernel}{suffix}"
        assert (entry["grid"], entry["block"]) == (list(launch.grid), list(launch.block))
        assert entry["node"] == launch.node and entry["layers"] == launch.layers and entry["flops"] == launch.flops
        assert entry["shared_bytes"] == launch.shared_bytes == 0  # fp32: static shared memory only
        assert [a["kind"] for a in entry["args"]] == [kind for kind, _ in launch.args]
        for arg, (kind, ref) in zip(entry["args"], launch.args):
            if kind == "tensor":
                offset, size, shape = program.tensors[ref]
                assert arg == {"kind": "tensor", "node": ref, "offset": offset, "size": size, "shape": list(shape),
                               "layout": "NCHW"}
                assert offset + size <= program.arena_size
            elif kind == "const":
                const = program.constants[ref]
                assert arg == {"kind": "const", "name": ref, "shape": list(const.shape), "dtype": str(const.dtype)}
            elif kind == "counters":
                assert arg == {"kind": "counters", "size": program.counters_size, "dtype": "int32"}
            else:
                assert arg == {"kind": "workspace", "size": program.workspace_size}
        source = (out / entry["file"]).read_text()
        assert source.startswith(f"/* cnngraph kernel, {dialect} dialect, fp32 storage */") and f"void {launch.kernel}(" in source
    assert leftovers(tmp_path) == []


NVRTC_REASON = _nvrtc_reason()


@pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))
def test_each_cu_file_compiles_alone_with_nvrtc(capsys, tmp_path):
    from cnngraph.codegen.nvrtc import compile_cuda

    manifest = codegen(capsys, tmp_path / "cuda")
    for entry in manifest["launches"]:
        reports = compile_cuda((tmp_path / "cuda" / entry["file"]).read_text(), "sm_80", name=entry["file"])
        assert set(reports) == {entry["kernel"]}


def test_each_cl_file_builds_alone_with_opencl(capsys, tmp_path):
    context, reason = _opencl_context()
    if context is None:
        pytest.skip(reason)
    import pyopencl as cl

    manifest = codegen(capsys, tmp_path / "opencl", "--dialect", "opencl")
    for entry in manifest["launches"]:
        program = cl.Program(context, (tmp_path / "opencl" / entry["file"]).read_text()).build()
        assert [k.function_name for k in program.all_kernels()] == [entry["kernel"]]


def test_weights_are_checked(capsys, tmp_path):
    weights = cnngraph.compile(LENET, device="cpu").weights
    cnngraph.save_weights(weights, tmp_path / "w.npz")
    codegen(capsys, tmp_path / "ok", "--weights", tmp_path / "w.npz")
    del weights["c1.bias"]
    cnngraph.save_weights(weights, tmp_path / "bad.npz")
    code, out, err = run_main(capsys, "codegen", LENET, "-o", tmp_path / "bad", "--weights", tmp_path / "bad.npz")
    assert_one_line_error(code, out, err, "bad.npz", "c1.bias")
    assert not (tmp_path / "bad").exists() and leftovers(tmp_path) == []


# --- the folder: refused, replaced, never half-written ---------------------------------------------

def test_refuses_a_non_empty_folder(capsys, tmp_path):
    out = tmp_path / "kernels"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, stdout, err = run_main(capsys, "codegen", LENET, "-o", out)
    assert_one_line_error(code, stdout, err, str(out), "not empty", "--force")
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and leftovers(tmp_path) == []


def test_force_replaces_and_an_empty_folder_is_used(capsys, tmp_path):
    out = tmp_path / "kernels"
    out.mkdir()
    codegen(capsys, out)  # empty: fine without --force
    (out / "stale.cu").write_text("old")
    manifest = codegen(capsys, out, "--force", "--dialect", "opencl")
    assert sorted(p.name for p in out.iterdir()) == sorted([l["file"] for l in manifest["launches"]] +
                                                           ["manifest.json"])
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("make, target, phrases", [
    (lambda d: (d / "file").write_text("x"), "file", ("file", "not a folder")),
    (lambda d: None, "missing/kernels", ("kernels", "no folder")),
], ids=["target_is_a_file", "missing_parent"])
def test_bad_targets(capsys, tmp_path, make, target, phrases):
    make(tmp_path)
    code, out, err = run_main(capsys, "codegen", LENET, "-o", tmp_path / target)
    assert_one_line_error(code, out, err, *phrases)
    assert out == "" and leftovers(tmp_path) == []


def test_never_replaces_the_current_folder(capsys, tmp_path, monkeypatch):
    (tmp_path / "project.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    for target in (".", str(tmp_path)):
        code, out, err = run_main(capsys, "codegen", LENET, "-o", target, "--force")
        assert_one_line_error(code, out, err, "current folder")
    assert [p.name for p in tmp_path.iterdir()] == ["project.txt"]


def test_failure_while_writing_leaves_nothing(capsys, tmp_path, monkeypatch):
    out = tmp_path / "kernels"
    out.mkdir()
    (out / "old.cu").write_text("old")
    written = []

    def write_text(self, text, *args, **kwargs):
        if written:
            raise OSError(28, "No space left on device")
        written.append(self)
        return Path.write_bytes(self, text.encode())

    monkeypatch.setattr(Path, "write_text", write_text)
    code, stdout, err = run_main(capsys, "codegen", LENET, "-o", out, "--force")
    assert_one_line_error(code, stdout, err, str(out), "cannot write", "No space left")
    assert [p.name for p in out.iterdir()] == ["old.cu"]  # the old folder is untouched
    assert leftovers(tmp_path) == []


def test_bad_spec_subprocess(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format_version": 1, "inputs": [{"name": "x", "shape": [1, 4, 4]}], '
                   '"layers": [{"op": "conv2d", "name": "c", "out_channels": 0, "kernel_size": 3}]}')
    result = cli("codegen", bad, "-o", tmp_path / "out")
    assert_one_line_error(result.returncode, result.stdout, result.stderr, "bad.json", '"c"', "out_channels")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_codegen_needs_an_output_folder(capsys):
    code, out, err = run_main(capsys, "codegen", LENET)
    assert_one_line_error(code, out, err, "-o")
