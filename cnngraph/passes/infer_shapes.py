"""Shape inference: sets every node's `shape` (batch included) and `flops` from the op rules.

Runs first, on the graph straight from `build_graph`; every later pass relies on `shape`.
"""

from __future__ import annotations

import networkx as nx

from ..errors import ShapeError
from ..graph import in_shapes, layer_nodes


def infer_shapes(g: nx.DiGraph) -> nx.DiGraph:
    batch = g.graph["batch_size"]
    for node in layer_nodes(g):
        attrs = g.nodes[node]
        try:
            shape = attrs["spec"].infer_shape(in_shapes(g, node))
        except ShapeError as err:
            err.path = err.path or attrs["path"]
            raise err.located(g.graph.get("source")) from None
        attrs["shape"] = (batch, *shape)
        attrs["flops"] = batch * attrs["spec"].flops(in_shapes(g, node), shape)
    return g
