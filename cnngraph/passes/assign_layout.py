"""Store channels-last (NHWC) the tensors that only tensor-core convs and NHWC-capable kernels write and read.

A tensor-core conv reduces over (ky, kx, channel). With its input NHWC, consecutive channels of
one pixel are contiguous, so each thread copies its input window 16 bytes at a time (`cp.async.cg`
of four float32 values at tf32, eight 16-bit ones at fp16/bf16) instead of one value at a time;
NCHW keeps a pixel's channels H*W apart. The kernel that writes such a tensor stores it NHWC from
its accumulator fragments, so no layout conversion ever runs: the choice is made per tensor, where
every kernel around it can take it.

A conv adds its residuals at the index it stores (`r0[idx]`), and a window pool, a depthwise conv, a
concat, a channel slice or shuffle, an elementwise op, a layer norm, an upsampling
(`Layer.keeps_layout`) writes its output in its inputs' layout, so those tensors share one layout:
they are decided together, as one set (an elementwise op's operand that broadcasts, a
squeeze-excitation gate's (N, C, 1, 1), is layout-free: the same bytes either way). A set is stored
NHWC when every tensor in it is written by a tensor-core conv or one of those, is not a network
input or output, and is read only by kernels that take NHWC: a tensor-core conv whose channel groups
are a whole number of 4-byte cp.async copies (16-byte ones where they are whole vectors; a gated one
too), a conv adding it as a residual, one of those layout-keeping kernels, or a global pool
(`ANY_LAYOUT`: its (N, C, 1, 1) output is the same in both). Anything else (a flatten, a softmax,
the network's outputs) reads NCHW, and so do the tensors it reads. Runs after `assign_precision`, on
the final graph; the NumPy backend ignores layouts (it computes the same values), the GPU backends
convert a tensor when they upload or download it by name.

A network input is stored NHWC when only tensor-core convs of one group read it, as their ungated
input: the backends convert it as they upload it, its channels padded with zeros to whole 16-byte
vectors where they are not (the image's 3 channels: `padded_channels`, which the memory plan
counts), so the stem conv copies 16 bytes at a time too, over zero weight rows for the padding. So
is a tensor that a one-group tensor-core conv writes and only such convs read (lenet5's 6 channels
between its convs): its writer stores zeros in the padding channels.
"""

from __future__ import annotations

import networkx as nx

from ..geometry import cdiv
from ..graph import compute_of, layer_nodes, own_in_shapes
from ..ops import ANY_LAYOUT
from ..precision import copy_width, vector_width

NHWC = "NHWC"
CHANNELS_LAST_PRECISIONS = ("tf32", "fp16", "bf16")  # whose layout-keeping kernels may run NHWC


def tensor_core_conv(g: nx.DiGraph, node: str) -> bool:
    """The node is a conv whose tensor-core kernel can store its output NHWC."""
    compute = compute_of(g, node)
    return (compute is not None and compute.op == "conv2d" and compute.tensor_cores
            and len(g.nodes[node]["shape"]) == 4)


def keeps_layout(g: nx.DiGraph, node: str) -> bool:
    """The node's kernel writes its output in its inputs' layout, NCHW or NHWC: a window pool, a
    depthwise conv, a concat, a channel slice or shuffle, an elementwise op, a layer norm, an
    upsampling (`Layer.keeps_layout`)."""
    compute = compute_of(g, node)
    return compute is not None and compute.spec.keeps_layout(own_in_shapes(g, node))


def layout_partners(g: nx.DiGraph, node: str) -> list[str]:
    """The inputs a layout-keeping node reads in its output's layout (`Layer.layout_partners`: all
    but an elementwise op's operands that broadcast, which are layout-free)."""
    compute = compute_of(g, node)
    partners = compute.spec.layout_partners(own_in_shapes(g, node)) if compute is not None else None
    return [g.nodes[node]["inputs"][i] for i in partners or []]


def writes_channels_last(g: nx.DiGraph, node: str) -> bool:
    """The node's kernel can store its output NHWC (a layout-keeping kernel: when its inputs are)."""
    return tensor_core_conv(g, node) or (keeps_layout(g, node) and _in_precision(g))


def reads_channels_last(g: nx.DiGraph, node: str) -> bool:
    """The node's kernel can read its (first) input NHWC: a tensor-core conv copies a channel group
    of a window's pixel 16 bytes at a time, or 8 or 4 where its channels are not whole 16-byte
    vectors (`copy_width`), so a group must be a whole number of 4 bytes."""
    compute = compute_of(g, node)
    if keeps_layout(g, node) or compute.has(ANY_LAYOUT):
        return _in_precision(g)
    if not tensor_core_conv(g, node):
        return False
    channels = g.nodes[g.nodes[node]["inputs"][0]]["shape"][1]
    return copy_width(channels // compute.spec.groups, compute.precision) > 0


def _in_precision(g: nx.DiGraph) -> bool:
    """The network runs at a precision whose tensor-core convs read and write NHWC."""
    return g.graph.get("precision", "fp32") in CHANNELS_LAST_PRECISIONS


def assign_layout(g: nx.DiGraph) -> list[str]:
    """Mark the tensors stored NHWC (node attribute `layout`; `padded_channels` where their channels
    are padded); returns them."""
    sets = nx.utils.UnionFind()
    for node in layer_nodes(g):
        inputs, compute = g.nodes[node]["inputs"], compute_of(g, node)
        sets.union(node, *inputs[len(inputs) - compute.residuals:], *layout_partners(g, node))
    padded = [x for x in g.graph["inputs"] if _input_may_be_channels_last(g, x)]
    chosen = []
    for tensors in sets.to_sets():
        if len(tensors) == 1 and _may_be_padded(g, *tensors):
            padded += tensors
        elif all(_may_be_channels_last(g, t) for t in tensors):
            chosen += sorted(tensors)
    vector = vector_width(g.graph.get("precision", "fp32"))
    for t in padded:
        if g.nodes[t]["shape"][1] % vector:
            g.nodes[t]["padded_channels"] = cdiv(g.nodes[t]["shape"][1], vector) * vector
    for t in padded + chosen:
        g.nodes[t]["layout"] = NHWC
    return padded + chosen


def read_by_convs_alone(g: nx.DiGraph, t: str, one_group: bool = True) -> bool:
    """Every reader of `t` is a tensor-core conv (of one group: readers that take its channels
    padded with zeros, over zero weight rows, `Conv2d.lower`) that reads it as its ungated input,
    not as a residual."""
    for reader in g.successors(t):
        compute, inputs = compute_of(g, reader), g.nodes[reader]["inputs"]
        if not (tensor_core_conv(g, reader) and (compute.spec.groups == 1 or not one_group) and not compute.gated
                and inputs[0] == t and t not in inputs[1:]):
            return False
    return True


def _input_may_be_channels_last(g: nx.DiGraph, x: str) -> bool:
    """A network input that only tensor-core convs of one group read: the backends store it NHWC as
    they upload it, its channels padded to whole 16-byte vectors (the image's 3 channels to 4 at
    tf32, 8 at fp16/bf16): 16-byte copies for a few more products."""
    return len(g.nodes[x]["shape"]) == 4 and x not in g.graph["outputs"] and _in_precision(g) \
        and read_by_convs_alone(g, x)


def _may_be_padded(g: nx.DiGraph, t: str) -> bool:
    """A tensor a tensor-core conv of one group writes and only such convs read, whose channels are
    not whole 16-byte vectors (lenet5's 6): stored NHWC all the same, the writer storing zeros in
    the padding channels (`conv_mma`'s `out_pitch`)."""
    return tensor_core_conv(g, t) and compute_of(g, t).spec.groups == 1 and t not in g.graph["outputs"] \
        and read_by_convs_alone(g, t)


def _may_be_channels_last(g: nx.DiGraph, tensor: str) -> bool:
    if tensor in g.graph["inputs"] or tensor in g.graph["outputs"] or not writes_channels_last(g, tensor):
        return False
    for reader in g.successors(tensor):
        inputs = g.nodes[reader]["inputs"]
        first_residual = len(inputs) - compute_of(g, reader).residuals
        for slot in (i for i, name in enumerate(inputs) if name == tensor):
            as_input = (slot == 0 or keeps_layout(g, reader)) and reads_channels_last(g, reader)  # a concat: any
            as_residual = slot >= first_residual and writes_channels_last(g, reader)
            if not (as_input or as_residual):
                return False
    return True
