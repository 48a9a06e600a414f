"""Fuse a batch norm that could not fold into the weights into the epilogue of the node before
it, as a per-channel v * s + t applied in registers: after a conv's activation
(conv -> relu -> batch_norm), or after an elementwise node (add -> batch_norm, relu -> batch_norm
in pre-activation networks). Runs after fuse_activation (so a relu written as its own layer has
joined its producer) and before fuse_pool."""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..ops import ELEMENTWISE_OPS, batch_norm_scale_shift
from ..graph import base_op, topological_order
from .rewrite import fusion_blocker, merge_into_consumer, record

HOSTS = ("conv2d", *ELEMENTWISE_OPS)  # nodes whose epilogue can take a per-channel scale + shift


def fuse_batch_norm_epilogue(g: nx.DiGraph) -> list[str]:
    changes = []
    # a BN node may already carry an epilogue of its own (bn -> relu): it moves along, after the BN
    for bn in [n for n in topological_order(g) if base_op(g, n) == "batch_norm2d"]:
        (src,) = g.nodes[bn]["inputs"]
        attrs = g.nodes[src]
        reason = fusion_blocker(g, src, bn)
        if base_op(g, src) not in HOSTS:
            reason = "no_epilogue_host"  # after a pool, a concat, the input: it stays its own kernel
        op = attrs["op"]
        record(g, f"{op}+{g.nodes[bn]['op']}", src, bn, reason)
        if reason:
            continue
        bn_attrs = g.nodes[bn]
        scale, shift = batch_norm_scale_shift(bn_attrs["weights"], bn_attrs["spec"].eps)
        step = ("scale_shift", (scale.astype(np.float32), shift.astype(np.float32)))
        merge_into_consumer(g, src, bn, op=f"{op}+{bn_attrs['op']}", spec=attrs["spec"], weights=attrs["weights"],
                            inputs=list(attrs["inputs"]),
                            epilogue=list(attrs.get("epilogue", [])) + [step] + list(bn_attrs.get("epilogue", [])))
        changes.append(f"fused {bn} into the epilogue of {src}")
    return changes
