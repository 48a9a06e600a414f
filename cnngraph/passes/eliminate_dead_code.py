"""Dead-code elimination: remove the layers no network output depends on. Their names are kept in
`g.graph["dead_layers"]` (and in the report), so every spec layer stays accounted for.
Runs first: later passes never see, and the memory plan never places, a dead tensor."""

from __future__ import annotations

import networkx as nx


def eliminate_dead_code(g: nx.DiGraph) -> list[str]:
    outputs = g.graph["outputs"]
    live = set(outputs).union(*(nx.ancestors(g, o) for o in outputs)) | set(g.graph["inputs"])
    dead = [n for n in g.nodes if n not in live]
    for node in dead:
        g.graph.setdefault("dead_layers", []).extend(g.nodes[node]["layers"])
        g.remove_node(node)
    return [f"removed {node}: no output depends on it" for node in dead]
