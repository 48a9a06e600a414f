"""Graph surgery shared by the passes: dropping a pass-through node and merging a producer into
its only consumer. Both keep node ids of the surviving node so consumers and outputs stay valid."""

from __future__ import annotations

import networkx as nx

from ..graph import Compute, set_compute


def fusion_blocker(g: nx.DiGraph, producer: str, consumer: str) -> str | None:
    """Why `producer` cannot be merged into `consumer` (a reason code), or None if it can."""
    if producer in g.graph["outputs"]:
        return "is_output"  # the user asked for the producer's own result
    if single_consumer(g, producer) != consumer:
        return "multiple_consumers"
    return None


def record(g: nx.DiGraph, pattern: str, producer: str, consumer: str, reason: str | None) -> None:
    """One entry of the fusion report: what was considered, and why it was not fused."""
    g.graph.setdefault("fusion_report", []).append(
        {"pattern": pattern, "layers": g.nodes[producer]["layers"] + g.nodes[consumer]["layers"],
         "path": g.nodes[producer]["path"], "fused": reason is None, "reason": reason})


def single_consumer(g: nx.DiGraph, node: str) -> str | None:
    """The one node reading `node`, if exactly one does and `node` is not a network output."""
    if node in g.graph["outputs"]:
        return None
    readers = list(g.successors(node))
    if len(readers) != 1 or g.nodes[readers[0]]["inputs"].count(node) != 1:
        return None
    return readers[0]


def bypass(g: nx.DiGraph, node: str) -> None:
    """Remove a one-input node whose output equals its input; readers read its input instead,
    and its producer takes over its spec layers (so every layer stays accounted for)."""
    (src,) = g.nodes[node]["inputs"]
    g.nodes[src]["layers"] = g.nodes[src]["layers"] + g.nodes[node]["layers"]
    for reader in list(g.successors(node)):
        attrs = g.nodes[reader]
        attrs["inputs"] = [src if i == node else i for i in attrs["inputs"]]
        g.add_edge(src, reader, index=attrs["inputs"].index(src))
    g.remove_node(node)


def merge_into_consumer(g: nx.DiGraph, producer: str, consumer: str, compute: Compute,
                        weights: dict | None = None, inputs: list[str] | None = None) -> None:
    """Fold `producer` into `consumer` (its only reader): the consumer now computes `compute`,
    implements both layers and reads `inputs` (default: the producer's) with `weights` (default:
    the producer's)."""
    p, c = g.nodes[producer], g.nodes[consumer]
    c["layers"] = p["layers"] + c["layers"]
    c["flops"] = p.get("flops", 0) + c.get("flops", 0)
    c["inputs"] = list(p["inputs"] if inputs is None else inputs)
    c["path"] = p["path"]  # the merged node starts where the producer did in the spec
    c["weights"] = p.get("weights", {}) if weights is None else weights
    set_compute(g, consumer, compute)
    for position, src in enumerate(p["inputs"]):
        g.add_edge(src, consumer, index=position)
    g.remove_node(producer)
