"""Fuse an activation layer into the conv2d/linear before it: into its `activation` field when
nothing follows the op yet, else at the end of its epilogue (conv -> add -> relu). Applied in
registers on the GPU, in place on the CPU. Runs after fold_batch_norm and fuse_residual_add, so
conv -> batch_norm -> relu and conv -> batch_norm -> add -> relu each become one node."""

from __future__ import annotations

import networkx as nx

from ..ops import ACTIVATION_OPS, make_activation
from .rewrite import fusion_blocker, merge_into_consumer, record


def fuse_activation(g: nx.DiGraph) -> list[str]:
    changes = []
    for act in [n for n, op in g.nodes(data="op") if op in ACTIVATION_OPS]:
        (src,) = g.nodes[act]["inputs"]
        attrs = g.nodes[src]
        if attrs["op"].split("+")[0] not in ("conv2d", "linear"):
            continue  # nothing to fuse into (an activation after a pool or a concat stays a kernel)
        epilogue = list(attrs.get("epilogue", []))
        reason = fusion_blocker(g, src, act)
        if not reason and attrs["spec"].activation is not None and not epilogue:
            reason = "already_has_activation"
        record(g, f"{attrs['op']}+{g.nodes[act]['op']}", src, act, reason)
        if reason:
            continue
        act_spec = g.nodes[act]["spec"]
        activation = make_activation({k: v for k, v in act_spec.model_dump().items() if k not in ("name", "inputs")})
        spec = attrs["spec"]
        if epilogue:
            epilogue.append(("activation", activation))
        else:
            spec = spec.model_copy(update={"activation": activation})
        merge_into_consumer(g, src, act, op=attrs["op"] + "+" + act_spec.op, spec=spec, weights=attrs["weights"],
                            inputs=list(attrs["inputs"]), epilogue=epilogue)
        changes.append(f"fused {act} into {src}")
    return changes
