"""Fuse an activation layer into the node before it. Into a conv2d/linear: its `activation` field
when nothing follows the op yet, else the end of its epilogue (conv -> add -> relu). Into an
elementwise node (an unfolded batch_norm2d, an add, another activation): its epilogue, so
chains like batch_norm -> relu (pre-activation networks) or add -> relu become one kernel.
Applied in registers on the GPU, in place on the CPU. Runs after fold_batch_norm and
fuse_residual_add, so conv -> batch_norm -> relu and conv -> batch_norm -> add -> relu each
become one node."""

from __future__ import annotations

import networkx as nx

from ..graph import base_op, topological_order
from ..ops import ACTIVATION_OPS, ELEMENTWISE_OPS, GEMM_OPS, make_activation
from .rewrite import fusion_blocker, merge_into_consumer, record


def fuse_activation(g: nx.DiGraph) -> list[str]:
    changes = []
    for act in [n for n in topological_order(g) if g.nodes[n]["op"] in ACTIVATION_OPS]:  # chains front to back
        (src,) = g.nodes[act]["inputs"]
        attrs = g.nodes[src]
        base = base_op(g, src)
        if base not in GEMM_OPS + ELEMENTWISE_OPS:
            continue  # nothing to fuse into (an activation after a pool or a concat stays a kernel)
        epilogue = list(attrs.get("epilogue", []))
        reason = fusion_blocker(g, src, act)
        record(g, f"{attrs['op']}+{g.nodes[act]['spec'].label}", src, act, reason)
        if reason:
            continue
        act_spec = g.nodes[act]["spec"]
        activation = make_activation({k: v for k, v in act_spec.model_dump().items() if k not in ("name", "inputs")})
        spec = attrs["spec"]
        if base in GEMM_OPS and spec.activation is None and not epilogue:
            spec = spec.model_copy(update={"activation": activation})
        else:
            epilogue.append(("activation", activation))
        merge_into_consumer(g, src, act, op=attrs["op"] + "+" + activation.label, spec=spec, weights=attrs["weights"],
                            inputs=list(attrs["inputs"]), epilogue=epilogue)
        changes.append(f"fused {act} into {src}")
    return changes
