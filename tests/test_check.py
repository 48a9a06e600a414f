"""`cnngraph check`: every fused node against a float64 PyTorch reference of the raw network, and
the first node over the tolerance named, for bugs planted in one kernel or one NumPy step."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

import cnngraph
from cnngraph.backends.opencl_backend import OpenCLBackend
from cnngraph.check import check
from cnngraph.model import CompiledModel
from test_backends import OPENCL_REASON

pytest.importorskip("torch")

SPEC = {"format_version": 1, "name": "blocks", "inputs": [{"name": "x", "shape": [3, 12, 12]}], "layers": [
    {"op": "conv2d", "name": "stem", "out_channels": 8, "kernel_size": 3, "padding": 1},
    {"op": "batch_norm2d", "name": "bn"}, {"op": "relu", "name": "act"},
    {"op": "conv2d", "name": "c2", "out_channels": 8, "kernel_size": 3, "padding": 1},
    {"op": "add", "name": "res", "inputs": ["c2", "act"]}, {"op": "relu", "name": "act2"},
    {"op": "max_pool2d", "name": "pool", "kernel_size": 2},
    {"op": "flatten", "name": "flat"}, {"op": "linear", "name": "fc", "out_features": 5}]}
X = {"x": np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)}


@pytest.mark.parametrize("device", ["cpu", pytest.param("opencl", marks=pytest.mark.skipif(
    OPENCL_REASON is not None, reason=str(OPENCL_REASON)))])
def test_a_correct_model_is_within_the_tolerance_at_every_node(device):
    report = check(cnngraph.compile(SPEC, batch_size=2, device=device), X)
    assert report.first_failure is None
    assert {"act", "pool", "fc"} <= {n.layers[-1] for n in report.nodes}  # fused: stem+bn+act, c2+res+act2+pool
    assert all(0 < n.rel_error < 1e-5 for n in report.nodes)


@pytest.mark.skipif(OPENCL_REASON is not None, reason=str(OPENCL_REASON))
def test_a_bug_planted_in_one_kernel_is_pointed_at():
    p = cnngraph.plan(SPEC, 2)
    program = copy.deepcopy(p.program)
    (victim,) = [l for l in program.launches if l.node == "pool"]
    assert "v += LOAD(r0[idx]);" in victim.body
    victim.body = victim.body.replace("v += LOAD(r0[idx]);", "v += 1.001f * LOAD(r0[idx]);")  # the residual add, 0.1% off
    report = check(CompiledModel(p, OpenCLBackend(p, program=program)), X)
    assert report.first_failure.node == "pool" and report.first_failure.layers == ["c2", "res", "act2", "pool"]
    assert "first node over the tolerance 0.0001: pool" in report.table()


def test_a_bug_planted_in_a_numpy_step_is_pointed_at(monkeypatch):
    from cnngraph.backends import numpy_backend

    real = numpy_backend.apply_numpy

    def off_by_a_little(out, steps, residuals):
        real(out, steps, residuals)
        if residuals:
            out *= 1.001
    monkeypatch.setattr(numpy_backend, "apply_numpy", off_by_a_little)
    report = check(cnngraph.compile(SPEC, batch_size=2, device="cpu"), X)
    assert report.first_failure.node == "pool"
    assert report.nodes[0].rel_error < 1e-6  # the node before it is still right


def test_cli_check_exit_status_and_table(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps(SPEC))
    cli = [sys.executable, "-m", "cnngraph.cli", "check", str(path), "--device", "cpu"]
    ok = subprocess.run(cli, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "every node within the tolerance 0.0001" in ok.stdout and "c2,res,act2,pool" in ok.stdout
    strict = subprocess.run([*cli, "--tolerance", "1e-12"], capture_output=True, text=True)
    assert strict.returncode == 1 and "first node over the tolerance 1e-12: act" in strict.stdout
    tf32 = subprocess.run([*cli, "--precision", "tf32"], capture_output=True, text=True)
    assert tf32.returncode == 0 and "tolerance 0.01" in tf32.stdout
    bad = subprocess.run([*cli, "--tolerance", "nan"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --tolerance") and "Traceback" not in bad.stderr
