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
from importlib.resources import files

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


def html_page(spec: NetworkSpec, graphs: dict[str, nx.DiGraph], initial: str, times: dict | None = None) -> str:
    """The page for `graphs` (e.g. {"optimized": g, "raw": g_raw}), showing `initial` first.
    `times`: {"device", "ms": node -> ms} measured on the optimized graph (`inspect --profile`)."""
    data = {"name": spec.name, "initial": initial, "reasons": REASONS,
            "style": {"char": CHAR_W, "line": LINE_H, "chip": CHIP_H, "pad": PAD},
            "graphs": {kind: graph_data(spec, g, times if kind == "optimized" else None)
                       for kind, g in graphs.items()}}
    return (PAGE.replace("__TITLE__", html.escape(f"{spec.name}: cnngraph"))
                .replace("__DATA__", script_json(data))
                .replace("__SCRIPT__", SCRIPT))


def script_json(data) -> str:
    """JSON that is safe inside a <script> element: no `</script>`, no `<!--`, no entities."""
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def graph_data(spec: NetworkSpec, g: nx.DiGraph, times: dict | None = None) -> dict:
    """Everything the page shows about one graph: its report, node boxes placed, edges, kernels,
    and each node's measured time and share of the total when `times` is given."""
    total = sum(times["ms"].values()) if times else 0.0
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
                      "kernels": kernels.get(node, []),
                      "time": ({"ms": times["ms"][node], "share": times["ms"][node] / total if total else 0.0,
                                "device": times["device"]} if times and node in times["ms"] else None)})
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


# The page and its script are package data files, so editors and linters see real HTML and JS.
_PAGE_DIR = files("cnngraph") / "report_page"
PAGE = (_PAGE_DIR / "page.html").read_text(encoding="utf-8")
SCRIPT = (_PAGE_DIR / "page.js").read_text(encoding="utf-8")
