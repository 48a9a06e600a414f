"""Human-readable and JSON views of a graph: one row per node with its layers, op, output shape,
parameter count, FLOPs and output bytes, plus totals. Read-only: nothing here changes the graph."""

from __future__ import annotations

import networkx as nx
import numpy as np

from .graph import topological_order


def node_rows(g: nx.DiGraph) -> list[dict]:
    rows = []
    for node in topological_order(g):
        a = g.nodes[node]
        spec = a["spec"]
        activation = getattr(spec, "activation", None)
        rows.append({
            "node": node,
            "layers": list(a["layers"]),
            "op": a["op"] + (f"+{activation.label}" if activation is not None and "+" not in a["op"] else ""),
            "path": a["path"],
            "inputs": list(a["inputs"]),
            "shape": list(a["shape"]),
            "params": int(sum(w.size for w in a.get("weights", {}).values())),
            "flops": int(a.get("flops", 0)),
            "output_bytes": 4 * int(np.prod(a["shape"])),
        })
    return rows


def summary_table(g: nx.DiGraph) -> str:
    rows = node_rows(g)
    header = ("layer", "op", "output shape", "params", "FLOPs", "output bytes")
    table = [(",".join(r["layers"]) or r["node"], r["op"], "x".join(map(str, r["shape"])), f"{r['params']:,}",
              _si(r["flops"]), _si(r["output_bytes"], "B")) for r in rows]
    total = ("total", f"{len(rows)} nodes", "", f"{sum(r['params'] for r in rows):,}",
             _si(sum(r["flops"] for r in rows)), _si(sum(r["output_bytes"] for r in rows), "B"))
    widths = [max(len(str(row[i])) for row in [header, *table, total]) for i in range(len(header))]
    widths[0] = min(widths[0], 48)

    def line(row):
        cells = [str(c) if len(str(c)) <= widths[i] else str(c)[:widths[i] - 1] + "…" for i, c in enumerate(row)]
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    title = f"{g.graph['name']}  (batch {g.graph['batch_size']})"
    return "\n".join([title, line(header), rule, *map(line, table), rule, line(total)])


def _si(value: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()
