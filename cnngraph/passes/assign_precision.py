"""Give every node whose products are a matrix multiplication (conv and linear, not depthwise) the
network's precision; the rest stay fp32. Runs after the optimization passes, also when they are
off: the precision is a property of the compiled network, not an optimization."""

from __future__ import annotations

import networkx as nx

from ..graph import compute_of, layer_nodes, own_in_shapes, set_compute
from ..precision import check_precision


def assign_precision(g: nx.DiGraph, precision: str) -> list[str]:
    g.graph["precision"] = check_precision(precision)
    changes = []
    for node in layer_nodes(g):
        compute = compute_of(g, node)
        if precision != "fp32" and compute.spec.runs_as_gemm(own_in_shapes(g, node)):
            set_compute(g, node, compute.but(precision=precision))
            changes.append(f"{node}: {precision}")
    return changes
