"""`cnngraph inspect --format html`: one self-contained page (inline CSS and JS, nothing fetched)
that draws the raw and the optimized graph as SVG, switchable by a toggle. Fused nodes are
colored groups listing their member layers, edges carry tensor shapes, and clicking a node shows
its spec parameters, FLOPs, bytes, arena offset, the fusion decisions involving it and the CUDA
source of its kernels. `page.html#graph=raw&node=conv1` opens a graph and a node directly.

The layout is computed here: longest-path layering (a node sits one row below its deepest
input), and within a row nodes are ordered by the mean position of their inputs. The script on
the page only draws what it is given. All data reaches it as one inert JSON block with `<`, `>`
and `&` escaped, and it inserts text with textContent, never as markup.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

import networkx as nx

from .codegen.dialects import CUDA
from .codegen.lower import lower
from .graph import topological_order
from .report import REASONS, fused, inspect_data, op_label
from .spec import NetworkSpec

# layout, in pixels (the script draws with the same numbers, passed in the data)
CHAR_W = 8          # width of a 12px character, generously (bold text)
LINE_H = 16         # one line of text
CHIP_H = 20         # one member layer inside a fused group
PAD = 8             # inside a box
NODE_MIN_W, NODE_MAX_W = 150, 360
ROW_GAP, COL_GAP, LANE_GAP, MARGIN = 56, 24, 12, 24


def html_page(spec: NetworkSpec, graphs: dict[str, nx.DiGraph], initial: str) -> str:
    """The page for `graphs` (e.g. {"optimized": g, "raw": g_raw}), showing `initial` first."""
    data = {"name": spec.name, "initial": initial, "reasons": REASONS,
            "style": {"char": CHAR_W, "line": LINE_H, "chip": CHIP_H, "pad": PAD},
            "graphs": {kind: graph_data(spec, g) for kind, g in graphs.items()}}
    return (PAGE.replace("__TITLE__", html.escape(f"{spec.name}: cnngraph"))
                .replace("__DATA__", script_json(data))
                .replace("__SCRIPT__", SCRIPT))


def script_json(data) -> str:
    """JSON that is safe inside a <script> element: no `</script>`, no `<!--`, no entities."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def graph_data(spec: NetworkSpec, g: nx.DiGraph) -> dict:
    """Everything the page shows about one graph: its report, node boxes placed, edges, kernels."""
    report = inspect_data(g)
    models = {layer.name: layer for layer in [*spec.inputs, *spec.layers]}
    layout = layered_layout(g, {n: box_size(g, n, models) for n in g})
    kernels, kernel_error = _kernels(g)
    nodes = []
    for row in report.pop("nodes"):
        node, layers = row["node"], row["layers"] or [row["node"]]
        (x, y), (w, h) = layout.places[node], layout.boxes[node]
        nodes.append({**row, "x": x, "y": y, "w": w, "h": h, "fused": fused(g, node),
                      "members": [{"layer": name, "op": _op_of(models.get(name))} for name in row["layers"]],
                      "params_by_layer": {name: models[name].model_dump(mode="json") for name in layers
                                          if name in models},
                      "fusion": [e for e in report["fusion"] if set(e["layers"]) & set(layers)],
                      "kernels": kernels.get(node, [])})
    edges = [{"from": src, "to": dst, "label": "x".join(map(str, g.nodes[src]["shape"])), **route}
             for (src, dst), route in zip(g.edges, layout.route_edges(g.edges))]
    width = max([layout.width, *(e["label_x"] + CHAR_W * len(e["label"]) + MARGIN for e in edges)])
    return {**report, "nodes": nodes, "edges": edges, "width": round(width), "height": layout.height,
            "kernel_error": kernel_error}


def box_size(g: nx.DiGraph, node: str, models: dict) -> tuple[int, int]:
    """(width, height) of a node's box: name, op and shape; a fused group lists its layers and their ops."""
    a = g.nodes[node]
    shape = "x".join(map(str, a["shape"]))
    if fused(g, node):
        texts = [f"fused {op_label(g, node)}", *(f"{layer} : {_op_of(models.get(layer))}" for layer in a["layers"]),
                 shape]
        height = 2 * PAD + 2 * LINE_H + CHIP_H * len(a["layers"])
    else:
        texts, height = [node, op_label(g, node), shape], 2 * PAD + 3 * LINE_H
    width = min(NODE_MAX_W, max(NODE_MIN_W, CHAR_W * max(map(len, texts)) + 5 * PAD))
    return width, height


@dataclass
class Layout:
    boxes: dict[str, tuple[int, int]]        # node -> (width, height)
    places: dict[str, tuple[float, float]]   # node -> top-left corner
    rank: dict[str, int]                     # node -> its row
    rows: list[tuple[float, float]]          # (top, bottom) of each row
    width: float
    height: float

    def route_edges(self, edges) -> list[dict]:
        """Per edge, the points it passes through and where its label goes. Between adjacent rows
        an edge is one S-curve; an edge that skips rows and would cross a box in between takes a
        lane to the right of those rows (lanes sharing rows are spread apart)."""
        lanes: list[tuple[int, int, float]] = []  # (first row, last row, x)
        routes = []
        for src, dst in edges:
            (x, y), (w, h) = self.places[src], self.boxes[src]
            start = (x + w / 2, y + h)
            end = (self.places[dst][0] + self.boxes[dst][0] / 2, self.places[dst][1])
            gap_y = self.rows[self.rank[src]][1] + ROW_GAP / 2  # just below the source's row: no boxes
            first, last = self.rank[src] + 1, self.rank[dst] - 1
            lane = self._lane(first, last, min(start[0], end[0]), max(start[0], end[0]), lanes)
            if lane is None:
                label = (_s_curve_x(start, end, gap_y), gap_y)
                points = [start, end]
            else:
                label = (lane, gap_y)
                points = [start, label, (lane, self.rows[last][1] + ROW_GAP / 2), end]
            left = end[0] < start[0] and lane is None
            routes.append({"points": [[round(px, 1), round(py, 1)] for px, py in points],
                           "label_x": round(label[0] + (-4 if left else 4), 1), "label_y": label[1],
                           "label_anchor": "end" if left else "start"})
        return routes

    def _lane(self, first: int, last: int, lo: float, hi: float, lanes: list) -> float | None:
        """The x of a lane past the boxes in rows first..last, or None when the edge's own span is clear."""
        between = [n for n, r in self.rank.items() if first <= r <= last]
        right = [self.places[n][0] + self.boxes[n][0] for n in between]
        if not any(self.places[n][0] <= hi and lo <= r for n, r in zip(between, right)):
            return None
        x = max(right) + COL_GAP / 2
        while any(f <= last and first <= l and abs(x - lx) < LANE_GAP for f, l, lx in lanes):
            x += LANE_GAP
        lanes.append((first, last, x))
        return x


def layered_layout(g: nx.DiGraph, boxes: dict[str, tuple[int, int]]) -> Layout:
    """Longest-path layering in topological order (a node sits one row below its deepest input);
    within a row, nodes sorted by the mean center of their inputs (stable, so ties keep
    topological order); each row centered."""
    order = topological_order(g)
    rank: dict[str, int] = {}
    for n in order:
        rank[n] = max((rank[p] + 1 for p in g.predecessors(n)), default=0)
    rows = [[] for _ in range(max(rank.values(), default=-1) + 1)]
    for n in order:
        rows[rank[n]].append(n)
    places, centers, spans, y = {}, {}, [], MARGIN
    for row in rows:
        row.sort(key=lambda n: _mean([centers[p] for p in g.predecessors(n)]))
        x = -(sum(boxes[n][0] for n in row) + COL_GAP * (len(row) - 1)) / 2
        for n in row:
            places[n], centers[n] = (x, y), x + boxes[n][0] / 2
            x += boxes[n][0] + COL_GAP
        spans.append((y, y + max(boxes[n][1] for n in row)))
        y = spans[-1][1] + ROW_GAP
    left = min((x for x, _ in places.values()), default=0)
    places = {n: (round(x - left + MARGIN), y) for n, (x, y) in places.items()}
    width = max((x + boxes[n][0] for n, (x, _) in places.items()), default=0) + MARGIN
    return Layout(boxes, places, rank, spans, width, y - ROW_GAP + MARGIN)


def _s_curve_x(start: tuple[float, float], end: tuple[float, float], y: float) -> float:
    """x where the S-curve from `start` to `end` (vertical tangents) crosses height `y` (bisection)."""
    (x0, y0), (x1, y1) = start, end
    lo, hi = 0.0, 1.0
    for _ in range(30):
        t = (lo + hi) / 2
        u = 1 - t
        lo, hi = (t, hi) if u ** 3 * y0 + 3 * u * t * (y0 + y1) / 2 + t ** 3 * y1 < y else (lo, t)
    t = (lo + hi) / 2
    return (1 - t) ** 2 * (1 + 2 * t) * x0 + t ** 2 * (3 - 2 * t) * x1


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _op_of(model) -> str:
    return getattr(model, "op", "input")


def _kernels(g: nx.DiGraph) -> tuple[dict[str, list[dict]], str | None]:
    """The CUDA kernels of each node, or ({}, why) when the graph cannot be lowered."""
    try:
        program = lower(g)
    except NotImplementedError as err:
        return {}, str(err)
    kernels: dict[str, list[dict]] = {}
    for launch in program.launches:
        kernels.setdefault(launch.node, []).append({
            "kernel": launch.kernel, "grid": list(launch.grid), "block": list(launch.block),
            "source": program.source(CUDA, launch)})
    return kernels, None


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
  body { margin: 0; font: 13px/1.4 system-ui, sans-serif; color: #1f2328; background: #fff; }
  header { padding: 10px 16px; border-bottom: 1px solid #d0d7de; background: #f6f8fa; }
  h1 { display: inline; font-size: 18px; margin-right: 16px; }
  .toggle button { font: inherit; padding: 3px 12px; border: 1px solid #8c959f; background: #fff; cursor: pointer; }
  .toggle button[aria-pressed="true"] { background: #0969da; color: #fff; border-color: #0969da; }
  .toggle { display: inline-block; }
  #summary { margin: 6px 0 0; color: #57606a; }
  .legend span { display: inline-block; width: 12px; height: 12px; border: 1px solid; margin: 0 4px 0 12px;
                 vertical-align: -2px; border-radius: 3px; }
  main { display: flex; height: calc(100vh - 72px); }
  #canvas { flex: 1; overflow: auto; }
  #details { width: 460px; overflow: auto; border-left: 1px solid #d0d7de; padding: 0 14px; }
  #details pre { background: #f6f8fa; padding: 8px; overflow: auto; font-size: 11px; }
  #details dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; }
  #details dt { color: #57606a; }
  #details dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
  .hint { color: #57606a; }
  .node { cursor: pointer; }
  .node rect.box { fill: #f6f8fa; stroke: #8c959f; }
  .node.input rect.box { fill: #ddf4ff; stroke: #54aeff; }
  .node.fused rect.box { fill: #fff4e5; stroke: #d4a72c; stroke-width: 2; }
  .node rect.chip { fill: #fff; stroke: #e4c57a; }
  .node.selected rect.box { stroke: #cf222e; stroke-width: 3; }
  .node text { font: 12px system-ui, sans-serif; fill: #1f2328; }
  .node text.name { font-weight: 600; }
  .node text.dim { fill: #57606a; font-family: ui-monospace, monospace; font-size: 11px; }
  .edge path { fill: none; stroke: #8c959f; stroke-width: 1.3; }
  .edge text { font: 10px ui-monospace, monospace; fill: #57606a; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
  .fusion-yes { color: #1a7f37; } .fusion-no { color: #9a6700; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div class="toggle" role="group" aria-label="graph">
    <button type="button" data-kind="optimized">optimized</button><button type="button" data-kind="raw">raw</button>
  </div>
  <span class="legend"><span style="background:#ddf4ff;border-color:#54aeff"></span>input<span
    style="background:#f6f8fa;border-color:#8c959f"></span>node<span
    style="background:#fff4e5;border-color:#d4a72c"></span>fused group</span>
  <p id="summary"></p>
</header>
<main>
  <div id="canvas"><svg id="graph" xmlns="http://www.w3.org/2000/svg" role="img"></svg></div>
  <aside id="details"><p class="hint">Click a node to see its parameters, costs, fusion decisions and
    generated kernels.</p></aside>
</main>
<script type="application/json" id="cnngraph-data">__DATA__</script>
<script>
__SCRIPT__
</script>
</body>
</html>
"""

SCRIPT = r"""
"use strict";
window.addEventListener("error", (e) => { document.body.dataset.error = String(e.message); });
const DATA = JSON.parse(document.getElementById("cnngraph-data").textContent);
const S = DATA.style;
const NS = "http://www.w3.org/2000/svg";
let graph = null;

function make(tag, attrs = {}, text = undefined, ns = null) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
const svg = (tag, attrs, text) => make(tag, attrs, text, NS);

function si(value, unit = "") {
  for (const [scale, prefix] of [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]])
    if (value >= scale) return (value / scale).toFixed(2) + " " + prefix + unit;
  return String(value) + (unit ? " " + unit : "");
}

function fit(text, width) {  // cut a label to the box, by the same character width as the layout
  const n = Math.floor((width - 2 * S.pad) / S.char);
  return text.length > n ? text.slice(0, Math.max(n - 1, 1)) + "\u2026" : text;
}

function drawEdge(parent, edge) {
  // each leg is an S-curve with vertical ends: straight down when both ends share an x
  const p = edge.points;
  let d = `M${p[0][0]},${p[0][1]}`;
  for (let i = 1; i < p.length; i++) {
    const [x0, y0] = p[i - 1], [x1, y1] = p[i], ym = (y0 + y1) / 2;
    d += ` C${x0},${ym} ${x1},${ym} ${x1},${i === p.length - 1 ? y1 - 2 : y1}`;
  }
  const group = svg("g", {class: "edge", "data-from": edge.from, "data-to": edge.to});
  group.append(svg("path", {d: d, "marker-end": "url(#arrow)"}),
               svg("text", {x: edge.label_x, y: edge.label_y + 3, "text-anchor": edge.label_anchor}, edge.label));
  parent.append(group);
}

function drawNode(n) {
  const kind = n.fused ? "fused" : n.op === "input" ? "input" : "plain";
  const g = svg("g", {class: "node " + kind, "data-node": n.node, transform: `translate(${n.x},${n.y})`,
                      tabindex: "0"});
  g.append(svg("title", {}, n.node + (n.layers.length ? " (" + n.layers.join(", ") + ")" : "")));
  g.append(svg("rect", {class: "box", width: n.w, height: n.h, rx: 6}));
  let y = S.pad + S.line - 4;
  const line = (text, cls) => { g.append(svg("text", {x: S.pad, y: y, class: cls}, fit(text, n.w))); y += S.line; };
  if (n.fused) {
    line("fused " + n.op, "name");
    for (const m of n.members) {
      g.append(svg("rect", {class: "chip", x: S.pad, y: y - S.line + 6, width: n.w - 2 * S.pad,
                            height: S.chip - 3, rx: 3}));
      g.append(svg("text", {x: 2 * S.pad, y: y + 2}, fit(m.layer + " \u00b7 " + m.op, n.w - 2 * S.pad)));
      y += S.chip;
    }
  } else {
    line(n.node, "name");
    line(n.op, "");
  }
  line(n.shape.join("x"), "dim");
  g.addEventListener("click", () => select(n.node));
  g.addEventListener("keydown", (e) => { if (e.key === "Enter") select(n.node); });
  return g;
}

function draw(kind) {
  graph = DATA.graphs[kind];
  const root = document.getElementById("graph");
  root.replaceChildren();
  for (const [k, v] of Object.entries({width: graph.width, height: graph.height,
                                       viewBox: `0 0 ${graph.width} ${graph.height}`})) root.setAttribute(k, v);
  const defs = svg("defs");
  const marker = svg("marker", {id: "arrow", viewBox: "0 0 8 8", refX: 7, refY: 4, markerWidth: 7,
                                markerHeight: 7, orient: "auto"});
  marker.append(svg("path", {d: "M0,0 L8,4 L0,8 z", fill: "#8c959f"}));
  defs.append(marker);
  const edges = svg("g", {class: "edges"}), nodes = svg("g", {class: "nodes"});
  for (const e of graph.edges) drawEdge(edges, e);
  for (const n of graph.nodes) nodes.append(drawNode(n));
  root.append(defs, edges, nodes);
  for (const b of document.querySelectorAll(".toggle button"))
    b.setAttribute("aria-pressed", String(b.dataset.kind === kind));
  document.getElementById("summary").textContent = summary(graph);
  document.getElementById("details").replaceChildren(make("p", {class: "hint"},
    "Click a node to see its parameters, costs, fusion decisions and generated kernels."));
  document.body.dataset.graph = kind;
}

function summary(g) {
  const t = g.totals, parts = [`${kindName(g)} graph`, `${t.nodes} nodes`, `${t.params.toLocaleString()} params`,
                               si(t.flops, "FLOPs")];
  if (g.memory) parts.push(`peak activations ${si(g.memory.planned_bytes, "B")} with memory planning, ` +
                           `${si(g.memory.unplanned_bytes, "B")} without`);
  const fusedCount = g.fusion.filter((e) => e.fused).length;
  parts.push(g.optimized ? (g.fusion.length ? `${fusedCount} of ${g.fusion.length} fusion opportunities taken`
                                            : "no fusion opportunities") : "not optimized");
  return parts.join(" \u00b7 ");
}
const kindName = (g) => g.optimized ? "optimized" : "raw";

function select(name) {
  const n = graph.nodes.find((m) => m.node === name);
  if (!n) return;
  for (const e of document.querySelectorAll(".node.selected")) e.classList.remove("selected");
  for (const e of document.querySelectorAll(".node"))
    if (e.getAttribute("data-node") === name) e.classList.add("selected");
  document.getElementById("details").replaceChildren(...details(n));
  document.body.dataset.selected = name;
}

function details(n) {
  const out = [make("h2", {}, n.node)];
  const facts = make("dl");
  const offset = n.offset_bytes === null ? "not planned" : n.offset_bytes.toLocaleString() + " B";
  for (const [k, v] of [["op", n.op], ["layers", n.layers.join(", ") || "(network input)"], ["spec path", n.path],
                        ["inputs", n.inputs.join(", ") || "-"], ["output shape", n.shape.join(" x ")],
                        ["params", n.params.toLocaleString()], ["FLOPs", n.flops.toLocaleString()],
                        ["bytes read", n.bytes_read.toLocaleString()],
                        ["bytes written", n.bytes_written.toLocaleString()], ["arena offset", offset]])
    facts.append(make("dt", {}, k), make("dd", {}, v));
  out.push(facts, make("h3", {}, "Parameters (spec)"));
  for (const [layer, params] of Object.entries(n.params_by_layer))
    out.push(make("h4", {}, layer), make("pre", {class: "params"}, JSON.stringify(params, null, 2)));
  out.push(make("h3", {}, "Fusion decisions"));
  const list = make("ul");
  for (const e of n.fusion) {
    const why = e.fused ? "" : `: ${e.reason} (${DATA.reasons[e.reason] || "see the fusion pass"})`;
    list.append(make("li", {class: e.fused ? "fusion-yes" : "fusion-no"},
                     `${e.fused ? "fused" : "not fused"} ${e.pattern} [${e.layers.join(", ")}]${why}`));
  }
  out.push(n.fusion.length ? list : make("p", {class: "hint"}, graph.optimized ? "none involve this node"
                                                                               : "the raw graph is not optimized"));
  out.push(make("h3", {}, "Generated CUDA kernels"));
  if (graph.kernel_error) out.push(make("p", {class: "hint"}, "not lowered: " + graph.kernel_error));
  else if (!n.kernels.length) out.push(make("p", {class: "hint"}, n.op === "input" ? "none (network input)" : "none (an alias of its input: no kernel)"));
  n.kernels.forEach((k, i) => {
    const box = make("details", i === 0 ? {open: ""} : {});
    box.append(make("summary", {}, `${k.kernel}  grid [${k.grid}]  block [${k.block}]`),
               make("pre", {class: "kernel", "data-kernel": k.kernel}, k.source));
    out.push(box);
  });
  return out;
}

for (const b of document.querySelectorAll(".toggle button")) b.addEventListener("click", () => draw(b.dataset.kind));
document.getElementById("title").textContent = DATA.name;
const wanted = new URLSearchParams(location.hash.slice(1));
draw(DATA.graphs[wanted.get("graph")] ? wanted.get("graph") : DATA.initial);
if (wanted.get("node")) select(wanted.get("node"));
document.body.dataset.ready = "1";
"""
