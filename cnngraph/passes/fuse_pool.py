"""Fuse a max/avg pool into the conv2d that feeds it, so the conv result never goes to memory:
the GEMM rows are ordered window by window, each thread owns whole windows, and the epilogue
stores only the pooled value (see codegen/templates.py `FusedPool`). Fuses non-overlapping,
unpadded pools (stride == kernel, the VGG/LeNet 2x2 pools) of up to 8 outputs per window; every
other geometry is reported with its reason (ResNet's overlapping 3x3/2 stem pool would need a
halo recomputed by neighbouring tiles). Runs last, after fuse_activation, so conv -> bn -> relu
-> pool becomes one node."""

from __future__ import annotations

import networkx as nx

from ..graph import base_op, in_shapes
from ..ops import POOL_OPS
from .rewrite import fusion_blocker, merge_into_consumer, record

MAX_WINDOW = 8  # outputs per window that fit one thread's register block (the tiles' rows)


def pool_blocker(g: nx.DiGraph, conv: str, pool: str) -> str | None:
    """Why this pool cannot be fused into this conv (a reason code), or None."""
    spec, conv_spec = g.nodes[pool]["spec"], g.nodes[conv]["spec"]
    (kh, kw), (sh, sw), padding = spec.geometry()
    _, p, q = g.nodes[conv]["shape"][1:]
    if (sh, sw) != (kh, kw):
        return "overlapping_pool_unsupported"
    if padding != (0, 0):
        return "padded_pool_unsupported"
    if spec.ceil_mode and (p % kh or q % kw):
        return "ceil_mode_partial_window"
    if MAX_WINDOW % (kh * kw):
        return "pool_window_too_large"
    if conv_spec.is_depthwise(in_shapes(g, conv)[0][0]):
        return "depthwise_conv"
    return None


def fuse_pool(g: nx.DiGraph) -> list[str]:
    changes = []
    for pool in [n for n, op in g.nodes(data="op") if op in POOL_OPS]:
        (conv,) = g.nodes[pool]["inputs"]
        attrs = g.nodes[conv]
        if base_op(g, conv) != "conv2d" or attrs.get("pool") is not None:
            continue
        reason = fusion_blocker(g, conv, pool) or pool_blocker(g, conv, pool)
        record(g, f"{attrs['op']}+{g.nodes[pool]['op']}", conv, pool, reason)
        if reason:
            continue
        merge_into_consumer(g, conv, pool, op=f"{attrs['op']}+{g.nodes[pool]['op']}", spec=attrs["spec"],
                            weights=attrs["weights"], inputs=list(attrs["inputs"]),
                            epilogue=list(attrs.get("epilogue", [])), pool=g.nodes[pool]["spec"],
                            conv_shape=attrs["shape"])
        changes.append(f"fused {pool} into {conv}")
    return changes
