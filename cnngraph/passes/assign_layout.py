"""Store channels-last (NHWC) the tensors that only tensor-core convolutions write and read.

A tensor-core conv reduces over (ky, kx, channel). With its input NHWC, four consecutive channels
of one pixel are 16 contiguous bytes, so each thread copies its input window 16 bytes at a time
(`cp.async.cg`) instead of one value at a time; NCHW keeps a pixel's channels H*W apart. The kernel
that writes such a tensor stores it NHWC from its accumulator fragments, so no layout conversion
ever runs: the choice is made per tensor, where every kernel around it can take it.

A conv adds its residuals at the index it stores (`r0[idx]`), so its output and its residual
inputs share one layout: they are decided together, as one set. A set is stored NHWC when every
tensor in it is written by a tensor-core conv, is not a network input or output, and is read only
by tensor-core convs: as the input of one whose channel groups are a whole number of 16-byte
vectors (and that is not gated: a gate scales values on the way through registers), or as a
residual. Anything else (a pool, a concat, a flatten, a depthwise conv, the network's outputs)
reads NCHW, and so do the tensors it reads. Runs after `assign_precision`, on the final graph; the
NumPy backend ignores layouts (it computes the same values), the GPU backends convert a tensor
when they upload or download it by name.
"""

from __future__ import annotations

import networkx as nx

from ..graph import compute_of, layer_nodes
from ..precision import element_bytes

NHWC = "NHWC"
CHANNELS_LAST_PRECISIONS = ("tf32",)  # whose tensor-core kernel (`conv_mma`) reads and writes NHWC


def writes_channels_last(g: nx.DiGraph, node: str) -> bool:
    """The node is a conv whose tensor-core kernel can store its output NHWC."""
    compute = compute_of(g, node)
    return (compute is not None and compute.op == "conv2d" and compute.tensor_cores
            and compute.precision in CHANNELS_LAST_PRECISIONS and len(g.nodes[node]["shape"]) == 4)


def reads_channels_last(g: nx.DiGraph, node: str) -> bool:
    """The node's tensor-core kernel can copy its (first) input NHWC, 16 bytes at a time."""
    if not writes_channels_last(g, node) or compute_of(g, node).gated:
        return False
    channels = g.nodes[g.nodes[node]["inputs"][0]]["shape"][1]
    vector = 16 // element_bytes(compute_of(g, node).precision)
    return (channels // compute_of(g, node).spec.groups) % vector == 0


def assign_layout(g: nx.DiGraph) -> list[str]:
    """Mark the tensors stored NHWC (node attribute `layout`); returns them."""
    sets = nx.utils.UnionFind()
    for node in layer_nodes(g):
        inputs = g.nodes[node]["inputs"]
        sets.union(node, *inputs[len(inputs) - compute_of(g, node).residuals:])
    chosen = []
    for tensors in sets.to_sets():
        if all(_may_be_channels_last(g, t) for t in tensors):
            chosen += sorted(tensors)
    for t in chosen:
        g.nodes[t]["layout"] = NHWC
    return chosen


def _may_be_channels_last(g: nx.DiGraph, tensor: str) -> bool:
    if tensor in g.graph["outputs"] or not writes_channels_last(g, tensor):
        return False
    for reader in g.successors(tensor):
        inputs = g.nodes[reader]["inputs"]
        first_residual = len(inputs) - compute_of(g, reader).residuals
        for slot in (i for i, name in enumerate(inputs) if name == tensor):
            as_input = slot == 0 and reads_channels_last(g, reader)
            as_residual = slot >= first_residual and writes_channels_last(g, reader)
            if not (as_input or as_residual):
                return False
    return True
