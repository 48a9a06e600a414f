"""Fuse a residual `add` into the conv2d/linear that computes one of its operands: the sum is
added in the conv's epilogue, in registers, before the single store (ResNet's bn2 -> add). The
other operands become extra inputs of the fused node. Runs after fold_batch_norm, before
fuse_activation (which then appends the ReLU after the add to the same epilogue)."""

from __future__ import annotations

import networkx as nx

from ..graph import base_op, topological_order
from ..ops import GEMM_OPS
from .rewrite import fusion_blocker, merge_into_consumer, record


def fuse_residual_add(g: nx.DiGraph) -> list[str]:
    changes = []
    for add in [n for n, op in g.nodes(data="op") if op == "add"]:
        operands = g.nodes[add]["inputs"]
        candidates = [src for src in operands if base_op(g, src) in GEMM_OPS]
        if not candidates:
            continue
        position = {n: i for i, n in enumerate(topological_order(g))}
        reasons = {}
        for src in sorted(candidates, key=position.get, reverse=True):  # prefer the operand computed last
            reasons[src] = fusion_blocker(g, src, add) or ("activation_before_add" if g.nodes[src]["spec"].activation
                                                            is not None or g.nodes[src].get("epilogue") else None)
            if reasons[src] is None:
                break
        src = next((s for s, r in reasons.items() if r is None), candidates[-1])
        record(g, f"{g.nodes[src]['op']}+add", src, add, reasons[src])
        if reasons[src]:
            continue
        attrs = g.nodes[src]
        residuals = [other for i, other in enumerate(operands) if i != operands.index(src)]
        merge_into_consumer(g, src, add, op=attrs["op"] + "+add", spec=attrs["spec"], weights=attrs["weights"],
                            inputs=list(attrs["inputs"]) + residuals,
                            epilogue=[("add", i) for i in range(len(residuals))])
        for position, other in enumerate(g.nodes[add]["inputs"]):
            g.add_edge(other, add, index=position)
        changes.append(f"fused {add} into {src}")
    return changes
