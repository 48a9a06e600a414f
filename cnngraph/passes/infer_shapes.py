"""Shape inference: sets every node's `shape` (batch included) and `flops` from the op rules.

Runs first, on the graph straight from `build_graph`; every later pass relies on `shape`.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..errors import ShapeError
from ..graph import in_shapes, layer_nodes


MAX_ELEMENTS = 2**31 - 1  # kernels index with 32-bit ints; NumPy would need 8 GiB per tensor anyway


def _check_size(attrs: dict, inputs: list, source: str | None) -> None:
    """Refuse tensors and weights too large to index, before anything is allocated."""
    spec = attrs["spec"]
    sizes = {"output": int(np.prod(attrs["shape"], dtype=object))}
    sizes.update({f"weight {k}": int(np.prod(s, dtype=object)) for k, s in spec.weight_shapes(inputs).items()})
    for what, size in sizes.items():
        if size > MAX_ELEMENTS:
            err = spec.shape_error(f"its {what} would have {size:,} elements, more than the {MAX_ELEMENTS:,} a "
                                   f"tensor may hold; use smaller sizes or a smaller batch")
            err.path = attrs["path"]
            raise err.located(source)


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
        _check_size(attrs, in_shapes(g, node), g.graph.get("source"))
        attrs["flops"] = batch * attrs["spec"].flops(in_shapes(g, node), shape)
    return g
