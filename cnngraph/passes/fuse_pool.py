"""Fuse a max/avg pool into the conv2d that feeds it, so the conv result never goes to memory: the
GEMM rows are ordered window by window, each thread (or on the tensor cores, each group of lanes of
a fragment) owns whole windows, and the epilogue stores only the pooled value (see
codegen/templates/gemm.py `FusedPool`). Fuses non-overlapping, unpadded pools (stride == kernel, the
VGG/LeNet 2x2 pools) of up to 8 outputs per window; every other geometry is reported with its reason
(ResNet's overlapping 3x3/2 stem pool would need a halo recomputed by neighbouring tiles). Runs
last, after fuse_activation, so conv -> bn -> relu -> pool becomes one node."""

from __future__ import annotations

import networkx as nx

from ..graph import PoolStep, compute_of, in_shapes
from ..ops import POOL
from .rewrite import fusion_blocker, merge_into_consumer, record

MAX_WINDOW = 8  # outputs per window that fit one thread's register block, or an 8-row half of an mma fragment


def pool_blocker(g: nx.DiGraph, conv: str, pool: str) -> str | None:
    """Why this pool cannot be fused into this conv (a reason code), or None."""
    spec, conv_spec = compute_of(g, pool).spec, compute_of(g, conv).spec
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
    for pool in [n for n in g.nodes if (c := compute_of(g, n)) and c.has(POOL) and c.is_plain]:
        (conv,) = g.nodes[pool]["inputs"]
        host = compute_of(g, conv)
        if host is None or host.op != "conv2d" or host.pool is not None:
            continue
        reason = fusion_blocker(g, conv, pool) or pool_blocker(g, conv, pool)
        record(g, f"{host.label}+{g.nodes[pool]['op']}", conv, pool, reason)
        if reason:
            continue
        step = PoolStep(compute_of(g, pool).spec, tuple(g.nodes[conv]["shape"]))
        merge_into_consumer(g, conv, pool, host.but(pool=step))
        changes.append(f"fused {pool} into {conv}")
    return changes
