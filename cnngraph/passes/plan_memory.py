"""Memory planning: every tensor the network computes (and every network input) gets an offset in
one arena, so backends allocate once and steady-state runs allocate nothing.

Liveness over the execution order: a tensor lives from the step that writes it to the last step
that reads it (network outputs to the end). Tensors whose lifetimes overlap never share memory;
a node's output never overlaps its own inputs, since both are live at its step. Placement is
greedy best-fit, largest tensors first (optimal on the CNN chains of the examples), or largest
size x lifetime first where that packs tighter (DenseNet's concatenations).

A flatten or reshape of a (N, C, 1, 1) or (N, F) tensor to another such is an alias: it shares
its input's storage (`alias_of`) and needs no copy. An elementwise node (batch norm, add,
activation, dropout) whose input is read by nothing after it writes over that input in place
(`in_place_of`). Runs last, on the final graph. Sets node attributes `offset` and `size` (float32
elements) and graph attributes `order` (the nodes to execute), `arena_size` and `unplanned_size`.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from ..graph import compute_of, layer_nodes
from ..ops import ELEMENTWISE

ALIGN = 64  # elements: 256-byte aligned tensors (coalescing, vector loads, OpenCL sub-buffers)


def execution_order(g: nx.DiGraph) -> list[str]:
    """The layer nodes some output depends on, in dependency order."""
    outputs = g.graph["outputs"]
    needed = set(outputs).union(*(nx.ancestors(g, o) for o in outputs))
    return [n for n in layer_nodes(g) if n in needed]


def is_free_reshape(g: nx.DiGraph, node: str) -> bool:
    """A flatten or reshape between tensors without spatial extent, (N, C, 1, 1) or (N, F): their
    bytes are the same in every layout, so it is an alias of its input (no copy, no kernel)."""
    compute = compute_of(g, node)
    if compute is None or compute.op not in ("flatten", "reshape"):
        return False
    (src,) = g.nodes[node]["inputs"]
    return all(d == 1 for shape in (g.nodes[src]["shape"], g.nodes[node]["shape"]) for d in shape[2:])


def _dying_input(g: nx.DiGraph, node: str, storage: dict, storage_last: dict, now: int) -> str | None:
    """An input whose storage an elementwise node may overwrite: same size, read by nothing later."""
    if not compute_of(g, node).has(ELEMENTWISE):
        return None
    size = int(np.prod(g.nodes[node]["shape"]))
    inputs = g.nodes[node]["inputs"]
    for src in inputs:
        if (storage_last[storage[src]] == now and int(np.prod(g.nodes[src]["shape"])) == size
                and sum(storage[i] == storage[src] for i in inputs) == 1):  # add(a, b, a) must read a twice
            return src
    return None


def plan_memory(g: nx.DiGraph) -> nx.DiGraph:
    order = execution_order(g)
    step = {name: i for i, name in enumerate(order)}
    end = len(order)
    storage = {name: name for name in [*g.graph["inputs"], *order]}  # tensor -> the one holding its bytes
    last_read = {name: max([step[r] for r in g.successors(name) if r in step], default=-1) for name in storage}
    for name in g.graph["outputs"]:
        last_read[name] = end
    storage_last = dict(last_read)  # per storage: the last step any tensor kept in it is read
    for name in order:
        src = g.nodes[name]["inputs"][0] if g.nodes[name]["inputs"] else None
        if is_free_reshape(g, name):
            storage[name] = storage[src]
            g.nodes[name]["alias_of"] = storage[name]
        elif (in_place := _dying_input(g, name, storage, storage_last, step[name])) is not None:
            storage[name] = storage[in_place]
            g.nodes[name]["in_place_of"] = in_place
        else:
            continue
        storage_last[storage[name]] = max(storage_last[storage[name]], last_read[name])
    tensors = {name: [-1, -1] for name in g.graph["inputs"]}  # written before step 0
    for name in order:
        if storage[name] == name:
            tensors[name] = [step[name], step[name]]
    for name in order:
        for src in g.nodes[name]["inputs"]:
            tensors[storage[src]][1] = max(tensors[storage[src]][1], step[name])
    for name in g.graph["outputs"]:
        tensors[storage[name]][1] = end
    sizes = {name: int(np.prod(g.nodes[name]["shape"])) for name in tensors}
    # largest first suits chains; largest size x lifetime first suits dense concatenations: keep the better
    by_size = lambda n: (-sizes[n], tensors[n][0], n)  # noqa: E731
    by_area = lambda n: (-sizes[n] * (tensors[n][1] - tensors[n][0] + 1), tensors[n][0], n)  # noqa: E731
    offsets, arena = min((_place(tensors, sizes, order) for order in (by_size, by_area)), key=lambda p: p[1])
    for name, root in storage.items():
        g.nodes[name]["offset"], g.nodes[name]["size"] = offsets[root], sizes[root]
    g.graph["order"] = order
    g.graph["arena_size"] = arena
    every_tensor = [int(np.prod(g.nodes[n]["shape"])) for n in storage]  # each in its own buffer
    g.graph["unplanned_size"] = sum(-(-s // ALIGN) * ALIGN for s in every_tensor)
    return g


def _place(tensors: dict, sizes: dict, order) -> tuple[dict[str, int], int]:
    """Greedy best-fit of every tensor, taken in `order` (a sort key): (offsets, arena size)."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets = {}
    for name in sorted(tensors, key=order):
        first, last = tensors[name]
        size = -(-sizes[name] // ALIGN) * ALIGN
        busy = sorted((o, s) for o, s, f, l in placed if f <= last and first <= l)
        offset, best = _best_fit(busy, size)
        offsets[name] = offset if best is not None else max((o + s for o, s in busy), default=0)
        placed.append((offsets[name], size, first, last))
    return offsets, max((o + s for o, s, _, _ in placed), default=0)


def _best_fit(busy: list[tuple[int, int]], size: int) -> tuple[int, int | None]:
    """The smallest gap between busy ranges that holds `size` (offset, gap), or (0, None)."""
    best_offset, best_gap, cursor = 0, None, 0
    for offset, length in busy:
        gap = offset - cursor
        if gap >= size and (best_gap is None or gap < best_gap):
            best_offset, best_gap = cursor, gap
        cursor = max(cursor, offset + length)
    return best_offset, best_gap
