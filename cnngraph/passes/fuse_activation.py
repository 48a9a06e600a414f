"""Fuse an activation layer into the conv2d/linear before it (applied in registers, or in place
on the CPU), when that node has no activation yet and no other reader. Runs after BN folding,
so conv -> batch_norm -> relu becomes one node."""

from __future__ import annotations

import networkx as nx

from ..ops import ACTIVATION_OPS, make_activation
from .rewrite import merge_into_consumer, single_consumer


def fuse_activation(g: nx.DiGraph) -> list[str]:
    changes = []
    for act in [n for n, op in g.nodes(data="op") if op in ACTIVATION_OPS]:
        (src,) = g.nodes[act]["inputs"]
        attrs = g.nodes[src]
        if attrs["op"].split("+")[0] not in ("conv2d", "linear") or attrs["spec"].activation is not None:
            continue
        if single_consumer(g, src) != act:
            continue
        act_spec = g.nodes[act]["spec"]
        fields = {k: v for k, v in act_spec.model_dump().items() if k not in ("name", "inputs")}
        spec = attrs["spec"].model_copy(update={"activation": make_activation(fields)})
        merge_into_consumer(g, src, act, op=attrs["op"] + "+" + act_spec.op, spec=spec, weights=attrs["weights"])
        changes.append(f"fused {act} into {src}")
    return changes
