"""Fold a per-channel affine layer (`batch_norm2d`, `scale`) into the conv2d that feeds it:
w' = w * s, b' = b * s + t with the layer's per-channel scale s and shift t (`channel_affine`),
computed in float64 and cast once. Only when the conv's output has no other reader and nothing is
applied after the conv yet (the affine must come first). One that cannot fold (after an activation
or an add, as in pre-activation networks) is left to fuse_batch_norm_epilogue, which makes it a
scale + shift step after the node before it, and reports it. Runs after remove_dropout."""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..graph import compute_of
from .rewrite import fusion_blocker, merge_into_consumer, record


def affine_of(g: nx.DiGraph, node: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) of a node that is only a per-channel affine layer, else None."""
    compute = compute_of(g, node)
    if compute is None or not compute.is_plain:
        return None
    return compute.spec.channel_affine(g.nodes[node].get("weights", {}))


def fold_batch_norm(g: nx.DiGraph) -> list[str]:
    changes = []
    for bn in [n for n in g.nodes if affine_of(g, n) is not None]:
        (conv,) = g.nodes[bn]["inputs"]
        host, op = compute_of(g, conv), compute_of(g, bn).op
        if host is None or host.op != "conv2d" or host.spec.activation is not None or host.epilogue:
            continue  # cannot fold into weights: fuse_batch_norm_epilogue decides (and reports) instead
        reason = fusion_blocker(g, conv, bn)
        record(g, f"{host.label}+{op}", conv, bn, reason)
        if reason:
            continue
        scale, shift = affine_of(g, bn)
        attrs = g.nodes[conv]
        w = attrs["weights"]["weight"].astype(np.float64)
        b = attrs["weights"].get("bias", np.zeros(len(scale))).astype(np.float64)
        weights = {"weight": (w * scale[:, None, None, None]).astype(np.float32),
                   "bias": (b * scale + shift).astype(np.float32)}
        merge_into_consumer(g, conv, bn, host.but(folded=(*host.folded, op)), weights=weights)
        changes.append(f"folded {bn} into {conv}")
    return changes
