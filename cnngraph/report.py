"""Read-only views of a graph for `cnngraph inspect` and `CompiledModel.summary()`: a text table,
a JSON document and Graphviz DOT text (the HTML page is built in `html_report.py` from the same
data). Nothing here changes the graph. Sizes are bytes of float32 data.

The JSON document (`cnngraph inspect --format json`, `inspect_data(g)`):

    {
      "name": "resnet18", "batch_size": 1,
      "optimized": true,                   # false with --raw
      "inputs": ["image"], "outputs": ["fc"],
      "nodes": [                           # topological order; network inputs included
        {"node": "relu",                   # the graph node (named after the last fused layer)
         "layers": ["conv1", "bn1", "relu"],   # the spec layers it implements
         "op": "conv2d+batch_norm2d+relu", "path": "/layers/0", "inputs": ["image"],
         "shape": [1, 64, 112, 112],       # output shape, batch included
         "layout": "NCHW",                 # "NHWC" where stored channels-last (reduced precisions); null if not 4-D
         "padded_channels": null,          # channels per pixel as stored, where padded (an NHWC image's 3 to 4 or 8)
         "tf32_stored": false,             # stored rounded to TF32 by its writer (tf32: only tensor-core convs read it)
         "params": 9472, "flops": 238436352,
         "output_bytes": 3211264,
         "bytes_read": 640000,             # its inputs and weights
         "bytes_written": 3211264,         # its output
         "offset_bytes": 0},               # where its output lives in the arena; null if not planned
        ...],
      "totals": {"nodes": 25, "params": ..., "flops": ..., "bytes_read": ..., "bytes_written": ...},
      "memory": {                          # peak activation memory; null if the graph is not planned
        "planned_bytes": 4014080,          # the arena, tensors sharing memory when lifetimes allow
        "unplanned_bytes": 9633792},       # every tensor in its own buffer
      "fusion": [                          # every fusion opportunity the optimizer considered
        {"pattern": "conv2d+batch_norm2d+relu+max_pool2d", "layers": ["conv1", "bn1", "relu", "maxpool"],
         "path": "/layers/0", "fused": false, "reason": "overlapping_pool_unsupported"}, ...],
      "passes": [{"pass": "fold_batch_norm", "changes": [...]}, ...]
    }
"""

from __future__ import annotations

import networkx as nx

from .graph import stored_elements, topological_order
from .precision import HALF_STORAGE, element_bytes

# what a fusion report's reason code means, for people
REASONS = {  # every reason code a pass records, in words
    "multiple_consumers": "its output is also read by another node",
    "is_output": "its output is a network output",
    "no_epilogue_host": "the layer before it (a pool, a concat or the input) takes no epilogue; the batch "
                        "norm runs as its own per-channel scale + shift kernel",
    "activation_before_add": "the conv already applies an activation or epilogue before the add",
    "overlapping_pool_unsupported": "overlapping windows (stride < kernel) would make neighbouring "
                                    "conv tiles recompute a halo; the pool runs as its own kernel",
    "padded_pool_unsupported": "a padded pool has windows that straddle the conv tile borders",
    "ceil_mode_partial_window": "ceil_mode leaves partial windows at the border",
    "pool_window_too_large": "a window of more than 8 outputs does not fit one thread's register block",
    "depthwise_conv": "the depthwise kernel has no pooling epilogue",
    "depthwise_no_gate": "the depthwise kernel does not scale its loads by a gate (the implicit GEMM does); "
                         "the mul runs as its own kernel",
    "not_zero_padding": "only zero padding folds into a conv; reflect, replicate or another value stays a pad kernel",
}


# --- data ------------------------------------------------------------------------------------------

def node_rows(g: nx.DiGraph) -> list[dict]:
    """One dict per node, in topological order (the "nodes" of the JSON document)."""
    rows = []
    storage = g.graph.get("precision", "fp32")
    eb = element_bytes(storage)  # of an activation as the GPU stores it; the weights count as float32
    for node in topological_order(g):
        a = g.nodes[node]
        params = int(sum(w.size for w in a.get("weights", {}).values()))
        written = eb * stored_elements(g, node)  # padded channels too
        precision = a["compute"].precision if a["compute"] is not None else None
        rows.append({
            "node": node,
            "layers": list(a["layers"]),
            "op": op_label(g, node),
            "precision": storage if precision and storage in HALF_STORAGE else precision,
            "path": a["path"],
            "inputs": list(a["inputs"]),
            "shape": list(a["shape"]),
            "layout": a.get("layout", "NCHW") if len(a["shape"]) == 4 else None,
            "padded_channels": a.get("padded_channels"),
            "tf32_stored": a.get("tf32_stored", False),
            "params": params,
            "flops": int(a.get("flops", 0)),
            "output_bytes": written,
            "bytes_read": sum(eb * stored_elements(g, i) for i in a["inputs"]) + 4 * params,
            "bytes_written": written,
            "offset_bytes": eb * a["offset"] if "offset" in a else None,
        })
    return rows


def op_label(g: nx.DiGraph, node: str) -> str:
    """The node's op as shown: the op attribute already names every fused step ("conv2d+relu")."""
    return g.nodes[node]["op"]


def totals(rows: list[dict]) -> dict:
    return {"nodes": len(rows), **{k: sum(r[k] for r in rows) for k in
                                   ("params", "flops", "bytes_read", "bytes_written")}}


def memory(g: nx.DiGraph) -> dict | None:
    """Peak activation memory with and without memory planning, or None for an unplanned graph."""
    if "arena_size" not in g.graph:
        return None
    eb = element_bytes(g.graph.get("precision", "fp32"))
    return {"planned_bytes": eb * g.graph["arena_size"], "unplanned_bytes": eb * g.graph["unplanned_size"]}


def fusion_report(g: nx.DiGraph) -> list[dict]:
    """The optimizer's fusion decisions (empty for a raw graph or before the pass records any)."""
    return [dict(entry, layers=list(entry["layers"])) for entry in g.graph.get("fusion_report") or []]


def inspect_data(g: nx.DiGraph) -> dict:
    """The JSON document described in the module docstring."""
    rows = node_rows(g)
    return {"name": g.graph["name"], "batch_size": g.graph["batch_size"], "optimized": is_optimized(g),
            "inputs": list(g.graph["inputs"]), "outputs": list(g.graph["outputs"]), "nodes": rows,
            "totals": totals(rows), "memory": memory(g), "fusion": fusion_report(g),
            "passes": [{"pass": name, "changes": changes} for name, changes in g.graph.get("passes", [])]}


def is_optimized(g: nx.DiGraph) -> bool:
    return "passes" in g.graph


def fused(g: nx.DiGraph, node: str) -> bool:
    return len(g.nodes[node]["layers"]) > 1


# --- text ------------------------------------------------------------------------------------------

def _layout_text(row: dict) -> str:
    """After a shape in the table: " NHWC" where stored channels-last, with its padded channels, and
    " TF32-rounded" where stored so."""
    rounded = " TF32-rounded" if row["tf32_stored"] else ""
    if row["layout"] != "NHWC":
        return rounded
    return (f" NHWC (C padded to {row['padded_channels']})" if row["padded_channels"] else " NHWC") + rounded


def summary_table(g: nx.DiGraph) -> str:
    """One row per node (layers, op, shape, params, FLOPs, bytes read and written, arena offset) and totals."""
    rows = node_rows(g)
    header = ("layer", "op", "precision", "output shape", "params", "FLOPs", "read", "written", "arena offset")
    table = [(",".join(r["layers"]) or r["node"], r["op"], r["precision"] or "",
              "x".join(map(str, r["shape"])) + _layout_text(r),
              f"{r['params']:,}",
              _si(r["flops"]), _si(r["bytes_read"], "B"), _si(r["bytes_written"], "B"),
              "-" if r["offset_bytes"] is None else f"{r['offset_bytes']:,}") for r in rows]
    t = totals(rows)
    total = ("total", f"{t['nodes']} nodes", "", "", f"{t['params']:,}", _si(t["flops"]), _si(t["bytes_read"], "B"),
             _si(t["bytes_written"], "B"), "")
    widths = [max(len(str(row[i])) for row in [header, *table, total]) for i in range(len(header))]
    widths[0] = min(widths[0], 48)

    def line(row):
        cells = [str(c) if len(str(c)) <= widths[i] else str(c)[:widths[i] - 1] + "…" for i, c in enumerate(row)]
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    title = (f"{g.graph['name']}  (batch {g.graph['batch_size']}, {'optimized' if is_optimized(g) else 'raw'} graph, "
             f"precision {g.graph.get('precision', 'fp32')})")
    return "\n".join([title, line(header), rule, *map(line, table), rule, line(total)])


def memory_text(g: nx.DiGraph) -> str:
    m = memory(g)
    if m is None:
        return "memory: not planned"
    saved = 1 - m["planned_bytes"] / m["unplanned_bytes"] if m["unplanned_bytes"] else 0.0
    return (f"memory: peak activations {_si(m['planned_bytes'], 'B')} with planning, "
            f"{_si(m['unplanned_bytes'], 'B')} without ({saved:.0%} saved)")


def fusion_text(g: nx.DiGraph) -> str:
    if not is_optimized(g):
        return "fusion: not run on the raw graph (inspect without --raw to see it)"
    entries = fusion_report(g)
    if not entries:
        return "fusion: no fusion opportunities"
    done = sum(e["fused"] for e in entries)
    lines = [f"fusion: {done} fused, {len(entries) - done} not fused"]
    width = max(len(e["pattern"]) for e in entries)
    for e in entries:
        why = "" if e["fused"] else f"  ({e['reason']}: {REASONS.get(e['reason'], 'see the fusion pass')})"
        lines.append(f"  {'fused    ' if e['fused'] else 'not fused'}  {e['pattern']:<{width}}  "
                     f"{', '.join(e['layers'])}  {e['path']}{why}")
    return "\n".join(lines)


def inspect_text(g: nx.DiGraph) -> str:
    """`cnngraph inspect`'s table: the node table, then memory, then the fusion report."""
    return "\n\n".join([summary_table(g), memory_text(g), fusion_text(g)])


def _si(value: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


# --- Graphviz DOT ----------------------------------------------------------------------------------

def to_dot(g: nx.DiGraph) -> str:
    """Graphviz DOT: a box per node (op, layers, shape), edges labelled with the tensor shape, and each
    fused node inside a cluster that lists its member layers."""
    lines = [f"digraph {_quote(g.graph['name'])} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#f6f8fa", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#57606a"];']
    for index, node in enumerate(topological_order(g)):
        statement = f"{_quote(node)} [label={_label(g, node)}{_input_style(g, node)}];"
        if fused(g, node):
            layers = ", ".join(g.nodes[node]["layers"])
            lines += [f"  subgraph {_quote(f'cluster_{index}')} {{",
                      f'    label={_quote("fused: " + layers)}; style="rounded,filled"; fillcolor="#fff4e5"; '
                      'color="#d4a72c"; fontname="Helvetica"; fontsize=9;',
                      f"    {statement}", "  }"]
        else:
            lines.append(f"  {statement}")
    for src, dst in g.edges:
        lines.append(f"  {_quote(src)} -> {_quote(dst)} [label={_quote(_dims(g.nodes[src]['shape']))}];")
    lines.append("}")
    return "\n".join(lines)


def _label(g: nx.DiGraph, node: str) -> str:
    a = g.nodes[node]
    parts = [node, op_label(g, node)] + ([", ".join(a["layers"])] if a["layers"] != [node] and a["layers"] else [])
    return _quote(*parts, _dims(a["shape"]))


def _input_style(g: nx.DiGraph, node: str) -> str:
    return ', shape=ellipse, fillcolor="#ddf4ff"' if g.nodes[node]["op"] == "input" else ""


def _quote(*lines: str) -> str:
    """A DOT string: quotes and backslashes escaped, lines joined by DOT's \\n."""
    return '"' + "\\n".join(s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") for s in lines) + '"'


def _dims(shape) -> str:
    return "x".join(map(str, shape))
