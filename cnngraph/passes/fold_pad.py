"""Fold a zero `pad` into the conv2d that reads it: the conv pads its own input instead (its
padding grows by the pad's sides, asymmetric if need be), so the padded copy is never made.
TensorFlow-ported networks pad before every stride-2 conv this way. Runs first among the fusions."""

from __future__ import annotations

import networkx as nx

from ..graph import compute_of
from .rewrite import fusion_blocker, merge_into_consumer, record


def fold_pad(g: nx.DiGraph) -> list[str]:
    changes = []
    for pad in [n for n in list(g.nodes) if (c := compute_of(g, n)) and c.op == "pad" and c.is_plain]:
        spec = compute_of(g, pad).spec
        readers = list(g.successors(pad))
        conv = readers[0] if readers else None
        host = compute_of(g, conv) if conv else None
        # the conv's own activation field applies after it, whatever its padding: only fused steps block
        if host is None or host.op != "conv2d" or host.folded or host.epilogue or host.pool or host.gated \
                or g.nodes[conv]["inputs"][0] != pad:
            continue
        zeros = spec.mode == "constant" and spec.value == 0
        reason = fusion_blocker(g, pad, conv) or (None if zeros else "not_zero_padding")
        record(g, f"pad+{host.label}", pad, conv, reason)
        if reason:
            continue
        left, right, top, bottom = spec.sides()
        t, b, l, r = host.spec.pads()
        padded = host.spec.model_copy(update={"padding": [t + top, l + left, b + bottom, r + right]})
        merge_into_consumer(g, pad, conv, host.but(spec=padded), weights=g.nodes[conv]["weights"])
        changes.append(f"folded {pad} into the padding of {conv}")
    return changes
