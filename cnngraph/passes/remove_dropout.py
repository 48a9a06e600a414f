"""Remove `dropout` (an identity at inference), except where it is a network output (its name is
how the user asks for that result). Runs after eliminate_dead_code."""

from __future__ import annotations

import networkx as nx

from ..graph import compute_of
from .rewrite import bypass


def remove_dropout(g: nx.DiGraph) -> list[str]:
    changes = []
    for node in [n for n in g.nodes if (c := compute_of(g, n)) and c.op == "dropout"]:
        if node in g.graph["outputs"]:
            continue  # its name is how the user asks for the result: keep it
        bypass(g, node)
        changes.append(f"removed dropout {node}")
    return changes
