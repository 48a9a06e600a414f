"""The network as a `networkx.DiGraph`: one node per spec layer plus one per network input.

Node attributes (every stage keeps these; passes may add more):
  op       what users see: the op name ("input", "conv2d", ...); a fused node names every step it
           computes ("conv2d+batch_norm2d+relu"). Derived from `compute`, never parsed.
  compute  what the node computes, typed (`Compute`: the base op's spec model and the steps fused
           into it); None for a network input
  layers   the spec layer names the node implements, in order
  inputs   the nodes it reads, in input order (edges carry the same as `index`)
  path     JSON pointer into the spec ("/layers/7")
  shape    output shape with the batch, set by the shape-inference pass
  layout   "NHWC" where the tensor is stored channels-last (passes/assign_layout.py); NCHW otherwise
  padded_channels  where an NHWC tensor stores more channels per pixel than it has (zeros after
           them, so each pixel is whole 16-byte vectors: the 3-channel image, lenet5's 6 channels
           between two convs); see `stored_shape`
  tf32_stored  True where the tensor is stored rounded to TF32 by its writer, at tf32: only
           tensor-core convs read it, and they would round it anyway (passes/assign_precision.py)
Graph attributes: name, inputs, outputs (node names), batch_size, source (the spec file).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import networkx as nx

from .errors import SpecError, shorten
from .ops import Layer
from .ops.epilogue import Epilogue, residual_count
from .precision import HALF_STORAGE
from .spec import NetworkSpec


@dataclass(frozen=True)
class PoolStep:
    """A pool fused into a conv's store: its spec model, and the conv's own (unpooled) output shape."""
    spec: Layer
    conv_shape: tuple[int, ...]


@dataclass(frozen=True)
class Compute:
    """What a node computes: its base op (the spec model it started as; its `activation` field
    included), then the layers folded into its weights, its epilogue steps and a fused pool. A
    `gated` node first multiplies its input by a per-(sample, channel) gate, its second input: a
    squeeze-excitation `mul` applied as the conv reads its input, so the gated tensor is never stored."""
    spec: Layer
    folded: tuple[str, ...] = ()   # ops folded into the weights ("batch_norm2d")
    epilogue: Epilogue = ()
    pool: PoolStep | None = None
    gated: bool = False
    precision: str = "fp32"        # of its matrix products (cnngraph/precision.py): "tf32" on tensor cores

    @property
    def op(self) -> str:
        """The base op ("conv2d" for conv2d+batch_norm2d+relu)."""
        return self.spec.op

    @property
    def steps(self) -> list[str]:
        """The fused steps after the base op, in the order they are applied."""
        activation = getattr(self.spec, "activation", None)
        return [*self.folded, *([activation.label] if activation is not None else []),
                *(step.label for step in self.epilogue), *([self.pool.spec.op] if self.pool else [])]

    @property
    def label(self) -> str:
        """The display op: "conv2d+batch_norm2d+relu" ("mul+conv2d" when gated)."""
        return "+".join([*(["mul"] if self.gated else []), self.op, *self.steps])

    @property
    def is_plain(self) -> bool:
        """Nothing fused into it yet."""
        return not self.steps and not self.gated

    def has(self, trait: str) -> bool:
        return self.spec.has(trait)

    @property
    def tensor_cores(self) -> bool:
        """Its products run on the tensor cores (`conv_mma`, `conv_mma16`): at every precision but
        fp32."""
        return self.precision in ("tf32", *HALF_STORAGE)

    @property
    def residuals(self) -> int:
        """Inputs after the op's own that its epilogue adds."""
        return residual_count(self.epilogue)

    def result_shape(self, node_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The base op's own output shape: the node's, or the conv's before a fused pool."""
        return self.pool.conv_shape if self.pool else tuple(node_shape)

    def but(self, **changes) -> "Compute":
        return dataclasses.replace(self, **changes)


def set_compute(g: nx.DiGraph, node: str, compute: Compute) -> None:
    """Give `node` what it computes; its display op follows."""
    g.nodes[node]["compute"], g.nodes[node]["op"] = compute, compute.label


def compute_of(g: nx.DiGraph, node: str) -> Compute | None:
    """What a node computes, or None for a network input."""
    return g.nodes[node]["compute"]


def build_graph(spec: NetworkSpec, batch_size: int) -> nx.DiGraph:
    g = nx.DiGraph(name=spec.name, inputs=[i.name for i in spec.inputs], outputs=spec.output_names,
                   batch_size=batch_size, source=spec.source)
    for index, inp in enumerate(spec.inputs):
        g.add_node(inp.name, op="input", compute=None, layers=[], inputs=[], path=f"/inputs/{index}",
                   shape=(batch_size, *inp.shape), order=-len(spec.inputs) + index)
    for index, layer in enumerate(spec.layers):
        compute = Compute(layer)
        g.add_node(layer.name, op=compute.label, compute=compute, layers=[layer.name], inputs=list(layer.inputs),
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


def topological_order(g: nx.DiGraph) -> list[str]:
    """Nodes in dependency order, ties broken by spec order so runs are reproducible."""
    return list(nx.lexicographical_topological_sort(g, key=lambda n: (g.nodes[n]["order"], n)))


def layer_nodes(g: nx.DiGraph) -> list[str]:
    """The computing nodes (network inputs left out), in dependency order."""
    return [n for n in topological_order(g) if g.nodes[n]["compute"] is not None]


def stored_shape(g: nx.DiGraph, node: str) -> tuple[int, ...]:
    """A tensor's shape (NCHW order) with its channels as stored: padded where `padded_channels`."""
    shape = tuple(g.nodes[node]["shape"])
    padded = g.nodes[node].get("padded_channels")
    return (shape[0], padded, *shape[2:]) if padded else shape


def stored_elements(g: nx.DiGraph, node: str) -> int:
    """The elements a tensor takes in the arena (`stored_shape`)."""
    return math.prod(stored_shape(g, node))


def in_shapes(g: nx.DiGraph, node: str) -> list[tuple[int, ...]]:
    """Per-sample shapes of a node's inputs, in input order."""
    return [g.nodes[src]["shape"][1:] for src in g.nodes[node]["inputs"]]


def own_in_shapes(g: nx.DiGraph, node: str) -> list[tuple[int, ...]]:
    """Per-sample shapes of the inputs the node's base op reads (its epilogue's residuals left out)."""
    shapes = in_shapes(g, node)
    return shapes[:len(shapes) - g.nodes[node]["compute"].residuals]
