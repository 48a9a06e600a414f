"""Fuse a batch norm that could not fold into the weights (because an activation comes between
it and the conv: conv -> relu -> batch_norm) into the conv's epilogue, as a per-channel
v * s + t applied after the activation, in registers. Runs after fuse_activation (so a relu
written as its own layer has joined the conv) and before fuse_pool."""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..ops import batch_norm_scale_shift
from .rewrite import fusion_blocker, merge_into_consumer, record


def fuse_batch_norm_epilogue(g: nx.DiGraph) -> list[str]:
    changes = []
    for bn in [n for n, op in g.nodes(data="op") if op == "batch_norm2d"]:
        (src,) = g.nodes[bn]["inputs"]
        attrs = g.nodes[src]
        if not attrs["op"].startswith("conv2d") or attrs.get("pool") is not None:
            continue  # fold_batch_norm already reported why this BN stays a node
        reason = fusion_blocker(g, src, bn)
        activation = attrs["spec"].activation
        op = attrs["op"] if activation is None or activation.label in attrs["op"].split("+") \
            else f"{attrs['op']}+{activation.label}"  # spell out the activation the BN comes after
        record(g, f"{op}+batch_norm2d", src, bn, reason)
        if reason:
            continue
        bn_attrs = g.nodes[bn]
        scale, shift = batch_norm_scale_shift(bn_attrs["weights"], bn_attrs["spec"].eps)
        step = ("scale_shift", (scale.astype(np.float32), shift.astype(np.float32)))
        merge_into_consumer(g, src, bn, op=f"{op}+batch_norm2d", spec=attrs["spec"], weights=attrs["weights"],
                            inputs=list(attrs["inputs"]), epilogue=list(attrs.get("epilogue", [])) + [step])
        changes.append(f"fused {bn} into the epilogue of {src}")
    return changes
