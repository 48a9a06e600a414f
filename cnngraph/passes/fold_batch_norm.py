"""Fold `batch_norm2d` into the conv2d that feeds it: w' = w * s, b' = b * s + t with the BN's
per-channel scale s and shift t, computed in float64 and cast once. Only when the conv's output
has no other reader and nothing is applied after the conv yet (BN must come first). A BN that
cannot fold (after an activation or an add, as in pre-activation networks) is left to
fuse_batch_norm_epilogue, which makes it a scale + shift step after the node before it, and
reports it. Runs after remove_dropout."""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..graph import compute_of
from ..ops import batch_norm_scale_shift
from .rewrite import fusion_blocker, merge_into_consumer, record


def fold_batch_norm(g: nx.DiGraph) -> list[str]:
    changes = []
    for bn in [n for n in g.nodes if (c := compute_of(g, n)) and c.op == "batch_norm2d" and c.is_plain]:
        (conv,) = g.nodes[bn]["inputs"]
        host = compute_of(g, conv)
        if host is None or host.op != "conv2d" or host.spec.activation is not None or host.epilogue:
            continue  # cannot fold into weights: fuse_batch_norm_epilogue decides (and reports) instead
        reason = fusion_blocker(g, conv, bn)
        record(g, f"{host.label}+batch_norm2d", conv, bn, reason)
        if reason:
            continue
        bn_attrs, attrs = g.nodes[bn], g.nodes[conv]
        scale, shift = batch_norm_scale_shift(bn_attrs["weights"], compute_of(g, bn).spec.eps)
        w = attrs["weights"]["weight"].astype(np.float64)
        b = attrs["weights"].get("bias", np.zeros(len(scale))).astype(np.float64)
        weights = {"weight": (w * scale[:, None, None, None]).astype(np.float32),
                   "bias": (b * scale + shift).astype(np.float32)}
        merge_into_consumer(g, conv, bn, host.but(folded=(*host.folded, "batch_norm2d")), weights=weights)
        changes.append(f"folded {bn} into {conv}")
    return changes
