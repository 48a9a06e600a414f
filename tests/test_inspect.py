"""`cnngraph inspect` in every format (table, json, dot, html) on resnet18 and squeezenet1_1, raw and
optimized: the numbers agree with the graph, the fusion report is shown (or its absence said),
DOT is well formed, the HTML page is self-contained, escapes what it embeds, and really draws
in a headless Chromium (skipped with the reason when Chromium is not installed).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import cnngraph
from cnngraph.cli import main
from cnngraph.codegen.lower import lower
from cnngraph.graph import topological_order
from cnngraph.report import REASONS, fusion_text, inspect_data, inspect_text, to_dot
from test_cli import assert_one_line_error, run_main

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ["resnet18", "squeezenet1_1"]
MODES = ["optimized", "raw"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def example(name: str) -> Path:
    return ROOT / "examples" / f"{name}.json"


@functools.cache
def graph(name: str, mode: str) -> nx.DiGraph:
    return cnngraph.compile(example(name), device="cpu", optimize=mode == "optimized").graph


@functools.cache
def inspect_output(name: str, mode: str, fmt: str) -> str:
    """stdout of `cnngraph inspect` (cached: each network, mode and format is run once)."""
    args = ["inspect", str(example(name)), "--format", fmt] + (["--raw"] if mode == "raw" else [])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(args) == 0
    return out.getvalue()


params = pytest.mark.parametrize("name, mode", [(n, m) for n in NETWORKS for m in MODES])


# --- table -----------------------------------------------------------------------------------------

@params
def test_table_rows_totals_memory_fusion(name, mode):
    out, g = inspect_output(name, mode, "table"), graph(name, mode)
    lines = out.splitlines()
    assert lines[0] == f"{name}  (batch 1, {mode} graph, precision fp32)"
    assert re.match(r"layer\s+op\s+precision\s+output shape\s+params\s+FLOPs\s+read\s+written\s+arena offset$",
                    lines[1])
    total = next(line for line in lines if line.startswith("total "))
    assert total.split()[1:3] == [str(len(g)), "nodes"]
    rows = lines[3:lines.index(total) - 1]
    assert len(rows) == len(g)
    for row, node in zip(rows, topological_order(g)):
        offset = 4 * g.nodes[node]["offset"]
        assert row.endswith(f"{offset:,}"), (node, row)  # the arena offset, in bytes
    memory = next(line for line in lines if line.startswith("memory:"))
    planned, unplanned = re.findall(r"([\d.]+ [kMG]?B)", memory)
    assert planned == _si_bytes(4 * g.graph["arena_size"]) and unplanned == _si_bytes(4 * g.graph["unplanned_size"])
    assert "with planning" in memory and "without" in memory
    fusion = lines[lines.index(memory) + 2]
    if mode == "raw":
        assert fusion.startswith("fusion: not run on the raw graph")
    elif g.graph.get("fusion_report"):
        entries = g.graph["fusion_report"]
        done = sum(e["fused"] for e in entries)
        assert fusion == f"fusion: {done} fused, {len(entries) - done} not fused"
        assert len(lines) == lines.index(memory) + 3 + len(entries)
    else:
        assert fusion == "fusion: no fusion opportunities"


def _si_bytes(value: int) -> str:
    from cnngraph.report import _si
    return _si(value, "B")


def fake_fusion_graph(entries) -> nx.DiGraph:
    g = cnngraph.compile(example("squeezenet1_1"), device="cpu").graph.copy()
    g.graph["fusion_report"] = entries
    return g


FUSION = [
    {"pattern": "conv2d+relu", "layers": ["features.0", "features.1"], "path": "/layers/0", "fused": True,
     "reason": None},
    {"pattern": "conv2d+max_pool2d", "layers": ["features.0", "features.2"], "path": "/layers/0", "fused": False,
     "reason": "overlapping_pool_unsupported"},
    {"pattern": "conv2d+add", "layers": ["x", "y"], "path": "/layers/9", "fused": False, "reason": "brand_new_code"},
]


def test_fusion_report_text_lists_decisions_and_reasons():
    text = fusion_text(fake_fusion_graph(FUSION))
    lines = text.splitlines()
    assert lines[0] == "fusion: 1 fused, 2 not fused"
    assert re.match(r"  fused\s+conv2d\+relu\s+features\.0, features\.1\s+/layers/0$", lines[1])
    assert "not fused" in lines[2] and "features.0, features.2" in lines[2]
    assert f"overlapping_pool_unsupported: {REASONS['overlapping_pool_unsupported']}" in lines[2]
    assert "brand_new_code" in lines[3]  # an unknown reason code is still shown


@pytest.mark.parametrize("entries", [None, []], ids=["missing", "empty"])
def test_fusion_report_missing_or_empty(entries):
    g = fake_fusion_graph(entries)
    if entries is None:
        del g.graph["fusion_report"]
    assert inspect_text(g).endswith("\n\nfusion: no fusion opportunities")
    assert inspect_data(g)["fusion"] == []


# --- json ------------------------------------------------------------------------------------------

@params
def test_json_matches_the_graph(name, mode):
    data, g = json.loads(inspect_output(name, mode, "json")), graph(name, mode)
    assert set(data) == {"name", "batch_size", "optimized", "inputs", "outputs", "nodes", "totals", "memory",
                         "fusion", "passes"}
    assert data["optimized"] is (mode == "optimized") and data["name"] == name
    assert [n["node"] for n in data["nodes"]] == topological_order(g)
    for row in data["nodes"]:
        a = g.nodes[row["node"]]
        params = sum(w.size for w in a.get("weights", {}).values())
        assert row["params"] == params
        assert row["bytes_read"] == 4 * (sum(np.prod(g.nodes[i]["shape"]) for i in a["inputs"]) + params)
        assert row["bytes_written"] == row["output_bytes"] == 4 * np.prod(a["shape"])
        assert row["offset_bytes"] == 4 * a["offset"]
    for key in ("params", "flops", "bytes_read", "bytes_written"):
        assert data["totals"][key] == sum(r[key] for r in data["nodes"])
    assert data["totals"]["nodes"] == len(g)
    assert data["memory"] == {"planned_bytes": 4 * g.graph["arena_size"],
                              "unplanned_bytes": 4 * g.graph["unplanned_size"]}
    assert data["memory"]["planned_bytes"] < data["memory"]["unplanned_bytes"]
    covered = sorted(layer for n in data["nodes"] for layer in n["layers"])
    assert covered == sorted(layer.name for layer in cnngraph.load_spec(example(name)).layers)
    for entry in data["fusion"]:
        assert set(entry) >= {"pattern", "layers", "path", "fused", "reason"}
        assert entry["fused"] == (entry["reason"] is None)
    if mode == "raw":
        assert data["fusion"] == [] and data["passes"] == []


def test_json_carries_the_fusion_report():
    data = inspect_data(fake_fusion_graph(FUSION))
    assert data["fusion"] == FUSION
    json.dumps(data)  # serializable as it is


# --- dot -------------------------------------------------------------------------------------------

DOT_NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" \[label="((?:[^"\\]|\\.)*)"[^\]]*\];$')
DOT_EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)" \[label="([0-9x]+)"\];$')


def check_dot(text: str, g: nx.DiGraph) -> dict[str, str]:
    """Structure of the DOT text: one digraph, balanced braces, every node and edge declared once,
    fused nodes inside clusters. Returns node -> label."""
    lines = text.splitlines()
    assert lines[0].startswith("digraph ") and lines[0].endswith("{") and lines[-1] == "}"
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    depth = 0
    for ch in unquoted:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    labels, edges, cluster = {}, set(), None
    for line in lines[1:-1]:
        if m := DOT_NODE.match(line):
            node = _unescape(m.group(1))
            assert node not in labels
            labels[node] = _unescape(m.group(2))
            assert (cluster is not None) == (len(g.nodes[node]["layers"]) > 1), node
            if cluster is not None:
                assert cluster == "fused: " + ", ".join(g.nodes[node]["layers"])
        elif m := DOT_EDGE.match(line):
            src, dst = _unescape(m.group(1)), _unescape(m.group(2))
            assert m.group(3) == "x".join(map(str, g.nodes[src]["shape"]))
            edges.add((src, dst))
        elif m := re.match(r'\s*subgraph "cluster_\d+" \{$', line):
            cluster = ""
        elif m := re.match(r'\s*label="((?:[^"\\]|\\.)*)"; style=', line):
            cluster = _unescape(m.group(1))
        elif line.strip() == "}":
            cluster = None
        else:
            assert re.match(r"\s*(rankdir|node|edge)\b", line), line
    assert set(labels) == set(g.nodes) and edges == set(g.edges)
    return labels


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


@params
def test_dot_is_well_formed(name, mode):
    g = graph(name, mode)
    labels = check_dot(inspect_output(name, mode, "dot"), g)
    for node, label in labels.items():
        a = g.nodes[node]
        lines = label.split("\n")
        assert lines[0] == node and a["op"] in lines[1] and lines[-1] == "x".join(map(str, a["shape"]))
        if len(a["layers"]) > 1:
            assert lines[2] == ", ".join(a["layers"])
    assert any(len(a) > 1 for _, a in g.nodes(data="layers")) == ("subgraph" in inspect_output(name, mode, "dot"))


def test_dot_escapes_names():
    spec = {"format_version": 1, "name": 'odd "net" \\ name',
            "inputs": [{"name": 'in"put', "shape": [2, 4, 4]}],
            "layers": [{"op": "conv2d", "name": 'c"1\\', "out_channels": 2, "kernel_size": 1},
                       {"op": "relu", "name": "r{1}"}]}
    g = cnngraph.compile(spec, device="cpu").graph
    text = to_dot(g)
    assert text.startswith('digraph "odd \\"net\\" \\\\ name" {')
    check_dot(text, g)


# --- html: structure -------------------------------------------------------------------------------

def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="cnngraph-data">(.*?)</script>', page, re.S)
    assert m, "no data block"
    assert "<" not in m.group(1)  # nothing in the data can close the script element or open a comment
    return json.loads(m.group(1))


@pytest.mark.parametrize("name", NETWORKS)
def test_html_is_self_contained_with_both_graphs(name):
    page = inspect_output(name, "optimized", "html")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"<link|<img|<iframe|@import|\bsrc=|\bhref=|url\((?!#)", page), "fetches something"
    assert re.findall(r"https?://[^\s\"'<>]+", page) == ["http://www.w3.org/2000/svg"] * 2  # SVG namespace only
    assert "default-src 'none'" in page  # and the CSP forbids fetching anyway
    data = page_data(page)
    assert data["initial"] == "optimized" and set(data["graphs"]) == {"optimized", "raw"}
    for mode, shown in data["graphs"].items():
        g = graph(name, mode)
        nodes = {n["node"]: n for n in shown["nodes"]}
        assert set(nodes) == set(g.nodes)
        assert {(e["from"], e["to"]) for e in shown["edges"]} == set(g.edges)
        for node, n in nodes.items():
            assert n["fused"] == (len(g.nodes[node]["layers"]) > 1)
            assert 0 <= n["x"] and n["x"] + n["w"] <= shown["width"] and n["y"] + n["h"] <= shown["height"]
            if g.nodes[node]["op"] != "input" and "alias_of" not in g.nodes[node]:  # an alias needs no kernel
                assert n["kernels"] and all(k["source"].startswith("/* cnngraph kernel, cuda dialect, fp32 storage */")
                                            for k in n["kernels"])
                assert set(n["params_by_layer"]) == set(g.nodes[node]["layers"])
        _check_no_overlap(shown["nodes"])
    assert inspect_output(name, "raw", "html").count('"initial": "raw"') == 1


def _check_no_overlap(nodes: list[dict]) -> None:
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or
                     a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, (a["node"], b["node"])


def test_html_rows_follow_dependencies():
    """Longest-path layering: every edge points down, to a later row."""
    data = page_data(inspect_output("resnet18", "optimized", "html"))["graphs"]["optimized"]
    nodes = {n["node"]: n for n in data["nodes"]}
    for e in data["edges"]:
        assert nodes[e["to"]]["y"] >= nodes[e["from"]]["y"] + nodes[e["from"]]["h"]


EVIL = '</script><script>alert(1)</script><!--'


def evil_spec(tmp_path) -> Path:
    spec = {"format_version": 1, "name": EVIL + " & <b>",
            "inputs": [{"name": "x", "shape": [2, 6, 6]}],
            "layers": [{"op": "conv2d", "name": EVIL, "out_channels": 2, "kernel_size": 3, "activation": "relu"},
                       {"op": "max_pool2d", "name": "p", "kernel_size": 2}]}
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(spec))
    return path


def test_html_escapes_what_it_embeds(capsys, tmp_path):
    code, page, err = run_main(capsys, "inspect", evil_spec(tmp_path), "--format", "html")
    assert code == 0, err
    assert page.count("</script>") == 2 and page.count("<script") == 2  # only the page's own
    assert "<!--" not in page and "<b>" not in page
    data = page_data(page)
    assert data["name"] == EVIL + " & <b>"
    assert EVIL in {n["node"] for n in data["graphs"]["raw"]["nodes"]}


# --- -o FILE ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["table", "json", "dot", "html"])
def test_output_file_is_written_whole(capsys, tmp_path, fmt):
    target = tmp_path / f"report.{fmt}"
    target.write_text("old")
    code, out, err = run_main(capsys, "inspect", example("squeezenet1_1"), "--format", fmt, "-o", target)
    assert code == 0 and out == "" and err == ""
    assert target.read_text() == inspect_output("squeezenet1_1", "optimized", fmt)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left behind


def test_output_file_kept_when_inspect_fails(capsys, tmp_path):
    target, bad = tmp_path / "report.html", tmp_path / "bad.json"
    target.write_text("old")
    bad.write_text('{"format_version": 1, "inputs": [{"name": "x", "shape": [1, 4, 4]}], '
                   '"layers": [{"op": "conv2d", "out_channels": 2, "kernal_size": 3}]}')
    code, out, err = run_main(capsys, "inspect", bad, "--format", "html", "-o", target)
    assert_one_line_error(code, out, err, "bad.json", "kernal_size")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "report.html"]


# --- html: in a real browser -----------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def chromium(tmp_path: Path, url: str, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--window-size=1400,900", *mode, url],
                          capture_output=True, text=True, timeout=120)


def png_pixels(path: Path) -> bytes:
    """The decompressed scanlines of a PNG (filter bytes included): enough to tell blank from drawn."""
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data = 8, b""
    while pos < len(blob):
        length = int.from_bytes(blob[pos:pos + 4], "big")
        kind = blob[pos + 4:pos + 8]
        if kind == b"IDAT":
            data += blob[pos + 8:pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(data)


@needs_chromium
@pytest.mark.parametrize("name, mode, select", [("resnet18", "optimized", "layer2.0.relu2"),
                                                ("squeezenet1_1", "raw", "features.3.cat")])
def test_html_renders_in_chromium(tmp_path, name, mode, select):
    page = tmp_path / f"{name}.html"
    page.write_text(inspect_output(name, "optimized", "html"))  # opens optimized; the URL switches to raw
    url = f"{page.as_uri()}#graph={mode}&node={select}"
    dom = chromium(tmp_path, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert ":CONSOLE" not in dom.stderr, [l for l in dom.stderr.splitlines() if ":CONSOLE" in l]
    html = dom.stdout
    assert 'data-ready="1"' in html and "data-error" not in html, "the page's script did not finish"
    assert f'data-graph="{mode}"' in html and f'data-selected="{select}"' in html
    g = graph(name, mode)
    drawn = set(re.findall(r'<g class="node [a-z]+[^"]*" data-node="([^"]*)"', html))
    assert drawn == set(g.nodes), set(g.nodes) ^ drawn
    assert len(re.findall(r'<g class="edge"', html)) == g.number_of_edges()
    kernels = [l.kernel for l in lower(g).launches if l.node == select]
    for kernel in kernels:  # the details panel shows the node's CUDA source
        assert f'data-kernel="{kernel}"' in html and f"KERNEL void {kernel}(" in html
    if mode == "optimized":
        assert '<g class="node fused' in html

    shot = tmp_path / "shot.png"
    result = chromium(tmp_path, url, f"--screenshot={shot}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = png_pixels(shot)
    assert len(pixels) > 1400 * 900  # the whole window
    assert len(set(pixels)) > 64, "the screenshot is (nearly) blank"
