"""Fuse an activation layer into the node before it. Into a conv2d/linear: its `activation` field
when nothing follows the op yet, else the end of its epilogue (conv -> add -> relu). Into an
elementwise node (an unfolded batch_norm2d, an add, another activation): its epilogue, so
chains like batch_norm -> relu (pre-activation networks) or add -> relu become one kernel.
Applied in registers on the GPU, in place on the CPU. Runs after fold_batch_norm and
fuse_residual_add, so conv -> batch_norm -> relu and conv -> batch_norm -> add -> relu each
become one node."""

from __future__ import annotations

import networkx as nx

from ..graph import compute_of, topological_order
from ..ops import ACTIVATION, ELEMENTWISE, GEMM, Activate
from .rewrite import fusion_blocker, merge_into_consumer, record


def fuse_activation(g: nx.DiGraph) -> list[str]:
    changes = []
    for act in [n for n in topological_order(g)  # chains front to back
                if (c := compute_of(g, n)) and c.has(ACTIVATION) and c.is_plain]:
        (src,) = g.nodes[act]["inputs"]
        host = compute_of(g, src)
        if host is None or not (host.has(GEMM) or host.has(ELEMENTWISE)):
            continue  # nothing to fuse into (an activation after a pool or a concat stays a kernel)
        activation = compute_of(g, act).spec.activation_model()
        reason = fusion_blocker(g, src, act)
        record(g, f"{host.label}+{activation.label}", src, act, reason)
        if reason:
            continue
        if host.has(GEMM) and host.spec.activation is None and not host.epilogue:
            fused = host.but(spec=host.spec.model_copy(update={"activation": activation}))
        else:
            fused = host.but(epilogue=(*host.epilogue, Activate(activation)))
        merge_into_consumer(g, src, act, fused)
        changes.append(f"fused {act} into {src}")
    return changes
