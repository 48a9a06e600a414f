"""Fuse a squeeze-excitation gate into the convolution that reads the gated tensor: `mul` of x
(C, H, W) by a gate s (C, 1, 1), read only by a conv2d, becomes that conv reading x and s and
scaling each input value by its (sample, channel) gate as it loads it. The gated tensor, as large
as x, is never written or read back. Runs last, on the fused convs."""

from __future__ import annotations

import networkx as nx

from ..graph import compute_of
from .rewrite import fusion_blocker, merge_into_consumer, record


def gate_operands(g: nx.DiGraph, node: str) -> tuple[str, str] | None:
    """(x, gate) of a plain `mul` of an image by a per-channel gate of the same channels, else None."""
    compute = compute_of(g, node)
    if compute is None or compute.op != "mul" or not compute.is_plain:
        return None
    a, b = g.nodes[node]["inputs"]
    for x, gate in ((a, b), (b, a)):
        c, *spatial = g.nodes[x]["shape"][1:]
        if len(spatial) == 2 and tuple(g.nodes[gate]["shape"][1:]) == (c, 1, 1) and spatial != [1, 1]:
            return x, gate
    return None


def fuse_gate(g: nx.DiGraph) -> list[str]:
    changes = []
    for mul in [n for n in list(g.nodes) if gate_operands(g, n)]:
        x, gate = gate_operands(g, mul)
        convs = [r for r in g.successors(mul) if compute_of(g, r).op == "conv2d" and not compute_of(g, r).gated
                 and g.nodes[r]["inputs"][0] == mul]
        if not convs:
            continue  # not read by a conv (a gate before a pool or an add stays its own kernel)
        conv, host = convs[0], compute_of(g, convs[0])
        depthwise = host.spec.is_depthwise(g.nodes[x]["shape"][1])
        reason = fusion_blocker(g, mul, conv) or ("depthwise_no_gate" if depthwise else None)
        record(g, f"mul+{host.label}", mul, conv, reason)
        if reason:
            continue
        inputs = [x, gate, *g.nodes[conv]["inputs"][1:]]  # the gate is the conv's second own input
        merge_into_consumer(g, mul, conv, host.but(gated=True), weights=g.nodes[conv]["weights"], inputs=inputs)
        for position, src in enumerate(inputs):
            g.add_edge(src, conv, index=position)
        changes.append(f"fused {mul} into {conv} as an input gate")
    return changes
