"""Fuse a batch norm (or another per-channel affine layer, `scale`) that could not fold into the
weights into the epilogue of the node before it, as a per-channel v * s + t applied in registers: after a conv's activation
(conv -> relu -> batch_norm), or after an elementwise node (add -> batch_norm, relu -> batch_norm
in pre-activation networks). Runs after fuse_activation (so a relu written as its own layer has
joined its producer) and before fuse_pool."""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..graph import compute_of, topological_order
from ..ops import ELEMENTWISE, GEMM, ScaleShift
from .rewrite import fusion_blocker, merge_into_consumer, record


def fuse_batch_norm_epilogue(g: nx.DiGraph) -> list[str]:
    changes = []
    # a BN node may already carry an epilogue of its own (bn -> relu): it moves along, after the BN
    for bn in [n for n in topological_order(g)
               if (c := compute_of(g, n)) and c.spec.channel_affine(g.nodes[n].get("weights", {})) is not None]:
        (src,) = g.nodes[bn]["inputs"]
        host, norm = compute_of(g, src), compute_of(g, bn)
        reason = fusion_blocker(g, src, bn)
        if host is None or not (host.has(GEMM) or host.has(ELEMENTWISE)):
            reason = "no_epilogue_host"  # after a pool, a concat, the input: it stays its own kernel
        record(g, f"{g.nodes[src]['op']}+{norm.label}", src, bn, reason)
        if reason:
            continue
        scale, shift = norm.spec.channel_affine(g.nodes[bn]["weights"])
        step = ScaleShift(scale.astype(np.float32), shift.astype(np.float32), label=norm.op)
        merge_into_consumer(g, src, bn, host.but(epilogue=(*host.epilogue, step, *norm.epilogue)))
        changes.append(f"fused {bn} into the epilogue of {src}")
    return changes
