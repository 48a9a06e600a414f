"""Fuse a residual `add` into the conv2d/linear that computes one of its operands: the sum is
added in the conv's epilogue, in registers, before the single store (ResNet's bn2 -> add). The
other operands become extra inputs of the fused node. Runs after fold_batch_norm, before
fuse_activation (which then appends the ReLU after the add to the same epilogue)."""

from __future__ import annotations

import networkx as nx

from ..graph import compute_of, topological_order
from ..ops import GEMM, Residual
from .rewrite import fusion_blocker, merge_into_consumer, record


def fuse_residual_add(g: nx.DiGraph) -> list[str]:
    changes = []
    for add in [n for n in g.nodes if (c := compute_of(g, n)) and c.op == "add" and c.is_plain]:
        operands = g.nodes[add]["inputs"]
        candidates = [src for src in operands if (c := compute_of(g, src)) and c.has(GEMM)]
        if not candidates:
            continue
        position = {n: i for i, n in enumerate(topological_order(g))}
        reasons = {}
        for src in sorted(candidates, key=position.get, reverse=True):  # prefer the operand computed last
            host = compute_of(g, src)
            reasons[src] = fusion_blocker(g, src, add) or ("activation_before_add" if host.spec.activation
                                                            is not None or host.epilogue else None)
            if reasons[src] is None:
                break
        src = next((s for s, r in reasons.items() if r is None), candidates[-1])
        record(g, f"{g.nodes[src]['op']}+add", src, add, reasons[src])
        if reasons[src]:
            continue
        host = compute_of(g, src)
        residuals = [other for i, other in enumerate(operands) if i != operands.index(src)]
        merge_into_consumer(g, src, add, host.but(epilogue=(Residual(tuple(range(len(residuals)))),)),
                            inputs=list(g.nodes[src]["inputs"]) + residuals)
        for position, other in enumerate(g.nodes[add]["inputs"]):
            g.add_edge(other, add, index=position)
        changes.append(f"fused {add} into {src}")
    return changes
