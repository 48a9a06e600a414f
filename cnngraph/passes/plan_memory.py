"""Memory planning: every tensor the network computes (and every network input) gets an offset in
one arena, so backends allocate once and steady-state runs allocate nothing.

Liveness over the execution order: a tensor lives from the step that writes it to the last step
that reads it (network outputs to the end). Tensors whose lifetimes overlap never share memory;
a node's output never overlaps its own inputs, since both are live at its step. Placement is
greedy best-fit, largest tensors first (optimal on the CNN chains of the examples), or largest
size x lifetime first where that packs tighter (DenseNet's concatenations).

A flatten or reshape of a (N, C, 1, 1) or (N, F) tensor to another such is an alias: it shares its
input's storage (`alias_of`) and needs no copy. An elementwise node (batch norm, add, activation,
dropout) whose input is read by nothing after it writes over that input in place (`in_place_of`).
Runs last, on the final graph. Sets node attributes `offset` and `size` (elements as stored: padded
channels too, `stored_elements`) and graph attributes `order` (the nodes to execute), `arena_size`
and `unplanned_size`.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter

import networkx as nx

from ..graph import compute_of, layer_nodes, stored_elements
from ..ops import ELEMENTWISE

ALIGN = 64  # elements: 256-byte aligned tensors (coalescing, vector loads, OpenCL sub-buffers)


def execution_order(g: nx.DiGraph) -> list[str]:
    """The layer nodes some output depends on, in dependency order."""
    needed, todo = set(g.graph["outputs"]), list(g.graph["outputs"])
    while todo:  # one walk back from all outputs together: linear, however many outputs there are
        for src in g.predecessors(todo.pop()):
            if src not in needed:
                needed.add(src)
                todo.append(src)
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
    """An input whose storage an elementwise node may overwrite: same size, read by nothing later.
    A node of one or two inputs is computed in one pass (each element read, then written), so either
    will do; an add of more is computed in several (out = x0 + x1, then out += x2, ...; in codegen,
    a chain of kernels past MAX_KERNEL_INPUTS), which read every input but the first after the
    output was written: it may overwrite only its first."""
    if not compute_of(g, node).has(ELEMENTWISE):
        return None
    size = stored_elements(g, node)
    inputs = g.nodes[node]["inputs"]
    reads = Counter(storage[src] for src in inputs)
    for src in inputs if len(inputs) <= 2 else inputs[:1]:
        if (storage_last[storage[src]] == now and stored_elements(g, src) == size
                and reads[storage[src]] == 1):  # add(a, b, a) must read a twice
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
    sizes = {name: stored_elements(g, name) for name in tensors}
    # largest first suits chains; largest size x lifetime first suits dense concatenations: keep the better
    by_size = lambda n: (-sizes[n], tensors[n][0], n)  # noqa: E731
    by_area = lambda n: (-sizes[n] * (tensors[n][1] - tensors[n][0] + 1), tensors[n][0], n)  # noqa: E731
    offsets, arena = min((_place(tensors, sizes, order) for order in (by_size, by_area)), key=lambda p: p[1])
    for name, root in storage.items():
        g.nodes[name]["offset"], g.nodes[name]["size"] = offsets[root], sizes[root]
    g.graph["order"] = order
    g.graph["arena_size"] = arena
    every_tensor = [stored_elements(g, n) for n in storage]  # each in its own buffer
    g.graph["unplanned_size"] = sum(-(-s // ALIGN) * ALIGN for s in every_tensor)
    return g


def _place(tensors: dict, sizes: dict, order) -> tuple[dict[str, int], int]:
    """Greedy best-fit of every tensor, taken in `order` (a sort key): (offsets, arena size).

    A tensor goes into the smallest gap between the placed tensors whose lifetimes overlap its own
    (its rivals), or on top of them. Past BEST_FIT_RIVALS rivals it goes on top at once: so many
    tensors live together are packed anyway (an `add` of 5,000 inputs), and looking for gaps among
    them would make planning quadratic."""
    lifetimes, skyline = _Lifetimes(tensors), _Skyline(tensors)
    offsets = {}
    for name in sorted(tensors, key=order):
        first, last = tensors[name]
        size = _aligned(sizes[name])
        gap = None
        if lifetimes.count(first, last) <= BEST_FIT_RIVALS:
            busy = sorted((offsets[r], _aligned(sizes[r])) for r in lifetimes.overlapping(first, last) if r in offsets)
            gap = _best_fit(busy, size)
        offsets[name] = skyline.top(first, last) if gap is None else gap
        skyline.raise_to(first, last, offsets[name] + size)
    return offsets, skyline.top(-1, skyline.last_step)


BEST_FIT_RIVALS = 64  # well above the examples' (at most 21: U-Net), low enough to keep planning linear


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _best_fit(busy: list[tuple[int, int]], size: int) -> int | None:
    """The offset of the smallest gap between busy ranges (sorted) that holds `size`, or None."""
    best_offset, best_gap, cursor = None, None, 0
    for offset, length in busy:
        gap = offset - cursor
        if gap >= size and (best_gap is None or gap < best_gap):
            best_offset, best_gap = cursor, gap
        cursor = max(cursor, offset + length)
    return best_offset


class _Lifetimes:
    """Every tensor's lifetime [first, last], indexed so that the tensors overlapping an interval are
    counted in O(log n) and listed in O(log n) each."""

    def __init__(self, tensors: dict):
        self.names = sorted(tensors, key=lambda n: tensors[n][0])
        self.firsts = [tensors[n][0] for n in self.names]
        self.sorted_lasts = sorted(last for _, last in tensors.values())
        # a max-tree over the lasts, in the order of the firsts: leaf i is self.names[i]
        self.width = 1 << max(0, len(self.names) - 1).bit_length()
        self.max_last = [-2] * (2 * self.width)  # -2: before any step, for the leaves past the last tensor
        self.max_last[self.width:self.width + len(self.names)] = [tensors[n][1] for n in self.names]
        for node in range(self.width - 1, 0, -1):
            self.max_last[node] = max(self.max_last[2 * node], self.max_last[2 * node + 1])

    def count(self, first: int, last: int) -> int:
        """How many lifetimes overlap [first, last]: those begun by `last`, less those over before `first`
        (every one of which began before `first`)."""
        return bisect_right(self.firsts, last) - bisect_left(self.sorted_lasts, first)

    def overlapping(self, first: int, last: int):
        """The tensors whose lifetimes overlap [first, last]: begun by `last` (a prefix of the leaves),
        still live at `first` (found by descending only where the max-tree reaches `first`)."""
        begun = bisect_right(self.firsts, last)
        todo = [(1, 0, self.width)]  # (tree node, its leaves lo:hi)
        while todo:
            node, lo, hi = todo.pop()
            if lo >= begun or self.max_last[node] < first:
                continue
            if node >= self.width:
                yield self.names[lo]
            else:
                mid = (lo + hi) // 2
                todo += [(2 * node, lo, mid), (2 * node + 1, mid, hi)]


class _Skyline:
    """Per step, the top of the arena the tensors placed so far use: raised over a range of steps
    and read (its highest point over a range) in O(log steps) each, by a segment tree whose nodes
    hold `floor` (a height raised over all their steps at once) and `peak` (their highest step)."""

    def __init__(self, tensors: dict):
        self.last_step = max([0, *(last for _, last in tensors.values())])
        self.width = 1 << (self.last_step + 1).bit_length()  # steps -1 .. last_step as leaves 0 ..
        self.floor = [0] * (2 * self.width)
        self.peak = [0] * (2 * self.width)

    def _ranges(self, first: int, last: int):
        """The tree nodes that tile steps [first, last], and the leaves at its two ends."""
        lo, hi = first + 1 + self.width, last + 2 + self.width
        ends, tiles = (lo, hi - 1), []
        while lo < hi:
            if lo & 1:
                tiles.append(lo)
                lo += 1
            if hi & 1:
                hi -= 1
                tiles.append(hi)
            lo, hi = lo // 2, hi // 2
        return tiles, ends

    def _ancestors(self, leaves):
        """Every node above the two end leaves: these hold every tile's ancestors."""
        for leaf in leaves:
            leaf //= 2
            while leaf:
                yield leaf
                leaf //= 2

    def raise_to(self, first: int, last: int, height: int) -> None:
        tiles, ends = self._ranges(first, last)
        for node in tiles:
            self.floor[node] = max(self.floor[node], height)
            self.peak[node] = max(self.peak[node], height)
        for node in self._ancestors(ends):  # each holds a raised step
            self.peak[node] = max(self.peak[node], height)

    def top(self, first: int, last: int) -> int:
        tiles, ends = self._ranges(first, last)
        return max(max(self.peak[node] for node in tiles), max(self.floor[node] for node in self._ancestors(ends)))
