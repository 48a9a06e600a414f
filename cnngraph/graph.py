"""The network as a `networkx.DiGraph`: one node per spec layer plus one per network input.

Node attributes (every stage keeps these; passes may add more):
  op      the op name ("input", "conv2d", ...; a fused node names its pattern, "conv2d+relu")
  layers  the spec layer names the node implements, in order
  inputs  the nodes it reads, in input order (edges carry the same as `index`)
  spec    the layer's spec model (None for a network input)
  path    JSON pointer into the spec ("/layers/7")
  shape   output shape with the batch, set by the shape-inference pass
Graph attributes: name, inputs, outputs (node names), batch_size, source (the spec file).
"""

from __future__ import annotations

import networkx as nx

from .errors import SpecError, shorten
from .spec import NetworkSpec


def build_graph(spec: NetworkSpec, batch_size: int) -> nx.DiGraph:
    g = nx.DiGraph(name=spec.name, inputs=[i.name for i in spec.inputs], outputs=spec.output_names,
                   batch_size=batch_size, source=spec.source)
    for index, inp in enumerate(spec.inputs):
        g.add_node(inp.name, op="input", layers=[], inputs=[], spec=None, path=f"/inputs/{index}",
                   shape=(batch_size, *inp.shape), order=-len(spec.inputs) + index)
    for index, layer in enumerate(spec.layers):
        g.add_node(layer.name, op=node_op(layer), layers=[layer.name], inputs=list(layer.inputs), spec=layer,
                   path=f"/layers/{index}", order=index)
    for layer in spec.layers:
        for position, src in enumerate(layer.inputs):
            g.add_edge(src, layer.name, index=position)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return g
    names = [u for u, _ in cycle] + [cycle[0][0]]
    first = cycle[0][0]
    raise SpecError("layers read each other in a cycle: " + _cycle_text(names), layer=first,
                    path=g.nodes[first]["path"], field="inputs", file=spec.source)


def _cycle_text(names: list[str], most: int = 8) -> str:
    """a -> b -> a, with long names and the middle of a long cycle elided (the message stays one short line)."""
    shown = [shorten(name, 40) for name in names]
    if len(shown) > most:
        shown = [*shown[:most - 2], f"... ({len(shown) - most + 1} more)", shown[-1]]
    return " -> ".join(shown)


def node_op(layer) -> str:
    """A layer's node op: its op, plus the activation its `activation` field fuses ("conv2d+relu")."""
    activation = getattr(layer, "activation", None)
    return layer.op + (f"+{activation.label}" if activation is not None else "")


def base_op(g: nx.DiGraph, node: str) -> str:
    """The op a node started as, before any fused step ("conv2d" for "conv2d+batch_norm2d+relu")."""
    return g.nodes[node]["op"].split("+")[0]


def topological_order(g: nx.DiGraph) -> list[str]:
    """Nodes in dependency order, ties broken by spec order so runs are reproducible."""
    return list(nx.lexicographical_topological_sort(g, key=lambda n: (g.nodes[n]["order"], n)))


def layer_nodes(g: nx.DiGraph) -> list[str]:
    """The computing nodes (network inputs left out), in dependency order."""
    return [n for n in topological_order(g) if g.nodes[n]["op"] != "input"]


def in_shapes(g: nx.DiGraph, node: str) -> list[tuple[int, ...]]:
    """Per-sample shapes of a node's inputs, in input order."""
    return [g.nodes[src]["shape"][1:] for src in g.nodes[node]["inputs"]]
