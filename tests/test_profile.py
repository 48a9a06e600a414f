"""`cnngraph profile`: every kernel (every node on NumPy) timed on its device, with its FLOPs and
bytes, in the table and the JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import cnngraph
from cnngraph.profile import profile, profile_table
from test_backends import BACKENDS

SPEC = {"format_version": 1, "name": "small", "inputs": [{"name": "x", "shape": [3, 16, 16]}], "layers": [
    {"op": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "activation": "relu"},
    {"op": "max_pool2d", "kernel_size": 2}, {"op": "flatten"}, {"op": "linear", "out_features": 4}]}


@pytest.mark.parametrize("device", ["cpu", *BACKENDS])
def test_every_kernel_is_timed_with_its_costs(device):
    model = cnngraph.compile(SPEC, batch_size=2, device=device)
    x = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    times = profile(model, x, repeats=3)
    expected = ([l.kernel for l in model.backend.program.launches] if device != "cpu"
                else [n for n in model.graph.graph["order"]])
    assert [t.kernel for t in times] == expected
    assert all(t.ms > 0 for t in times)
    conv = next(t for t in times if t.op.startswith("conv2d"))
    assert conv.flops == model.graph.nodes[conv.node]["flops"] and conv.bytes > 2 * 3 * 16 * 16 * 4
    table = profile_table(model, times)
    assert conv.kernel in table and "batch 2" in table and "images/s" in table


def test_cli_profile_json(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps(SPEC))
    done = subprocess.run([sys.executable, "-m", "cnngraph.cli", "profile", str(path), "--device", "cpu", "--repeats",
                           "2", "--format", "json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["device"] == "cpu" and data["kernels"] and all(k["ms"] > 0 for k in data["kernels"])


def test_inspect_html_profile_puts_each_nodes_time_on_the_page(tmp_path):
    import re

    path = tmp_path / "net.json"
    path.write_text(json.dumps(SPEC))
    page = tmp_path / "page.html"
    done = subprocess.run([sys.executable, "-m", "cnngraph.cli", "inspect", str(path), "--format", "html",
                           "--profile", "cpu", "-o", str(page)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = json.loads(re.search(r'<script type="application/json" id="cnngraph-data">(.*?)</script>', page.read_text(),
                                re.S).group(1))
    timed = [n for n in data["graphs"]["optimized"]["nodes"] if n["time"]]
    assert timed and all(n["time"]["ms"] > 0 and n["time"]["device"] == "cpu" for n in timed)
    assert abs(sum(n["time"]["share"] for n in timed) - 1) < 1e-6
    assert all(n["time"] is None for n in data["graphs"]["raw"]["nodes"])
    table = subprocess.run([sys.executable, "-m", "cnngraph.cli", "inspect", str(path), "--profile"],
                           capture_output=True, text=True)
    assert table.returncode == 2 and "add --format html" in table.stderr


def test_known_gpu_peaks_and_none_elsewhere():
    from cnngraph.profile import GPU_PEAKS, gpu_peaks

    assert gpu_peaks("NVIDIA H200") == {"fp32": 66.9, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "memory": 4.8}
    assert gpu_peaks("NVIDIA A100-SXM4-80GB")["tf32"] == 156.0 and gpu_peaks("Radeon VII") is None
    assert all(set(peaks) == {"fp32", "tf32", "fp16", "bf16", "memory"} for peaks in GPU_PEAKS.values())
    model = cnngraph.compile(SPEC, device="cpu")
    table = profile_table(model, profile(model, {"x": np.ones((1, 3, 16, 16), np.float32)}, repeats=1))
    assert "% peak" not in table  # the CPU's peak is not known


def test_progress_bars_stay_silent_off_a_terminal(capsys):
    from cnngraph.progress import progress_bar

    with progress_bar(3, "work") as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
