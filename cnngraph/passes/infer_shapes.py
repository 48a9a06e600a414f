"""Shape inference: sets every node's `shape` (batch included) and `flops` from the op rules.

Runs first, on the graph straight from `build_graph`; every later pass relies on `shape`.
"""

from __future__ import annotations

import math

import networkx as nx

from ..errors import ShapeError, quote
from ..graph import in_shapes, layer_nodes


MAX_ELEMENTS = 2**31 - 1  # kernels index with 32-bit ints; NumPy would need 8 GiB per tensor anyway


def _check_size(attrs: dict, inputs: list, source: str | None) -> None:
    """Refuse tensors and weights too large to index, before anything is allocated."""
    spec = attrs["compute"].spec
    sizes = {"output": math.prod(attrs["shape"])}
    sizes.update({f"weight {k}": math.prod(s) for k, s in spec.weight_shapes(inputs).items()})
    for what, size in sizes.items():
        if size > MAX_ELEMENTS:
            err = spec.shape_error(f"its {what} would have {size:,} elements, more than the {MAX_ELEMENTS:,} a "
                                   f"tensor may hold; use smaller sizes or a smaller batch")
            err.path = attrs["path"]
            raise err.located(source)


def _check_input_sizes(g: nx.DiGraph) -> None:
    """Network inputs too large to index (a [3, 10**6, 10**6] image, or batch 10**9): refused
    before any layer's shape rule multiplies them further."""
    for node in g.graph["inputs"]:
        attrs = g.nodes[node]
        size = math.prod(attrs["shape"])
        if size > MAX_ELEMENTS:
            batch, *shape = attrs["shape"]
            raise ShapeError(f"input {quote(node)} of shape {tuple(shape)} at batch {batch:,} would have "
                             f"{size:,} elements, more than the {MAX_ELEMENTS:,} a tensor may hold; use a smaller "
                             f"shape or batch",
                             path=attrs["path"], field="shape", file=g.graph.get("source"))


def infer_shapes(g: nx.DiGraph) -> nx.DiGraph:
    batch = g.graph["batch_size"]
    _check_input_sizes(g)
    for node in layer_nodes(g):
        attrs = g.nodes[node]
        try:
            shape = attrs["compute"].spec.infer_shape(in_shapes(g, node))
        except ShapeError as err:
            err.path = err.path or attrs["path"]
            raise err.located(g.graph.get("source")) from None
        attrs["shape"] = (batch, *shape)
        _check_size(attrs, in_shapes(g, node), g.graph.get("source"))
        attrs["flops"] = batch * attrs["compute"].spec.flops(in_shapes(g, node), shape)
    return g
