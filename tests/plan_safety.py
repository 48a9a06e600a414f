"""An independent check that a memory plan is safe, applied to every plan the tests make (see
conftest.py): when a node runs, every tensor still to be read holds its value. It knows nothing
of how plan_memory decides; it only replays the order: a kernel (not an alias) writes its output's
bytes at its step, and those bytes may overlap another tensor only if that tensor is dead by then,
or is read last by this very node (an in-place update of a dying input)."""

from __future__ import annotations

import numpy as np

CHECKED_UP_TO = 3000  # nodes: the check is quadratic (vectorised); the compile-time tests plan far larger chains


class UnsafePlan(AssertionError):
    pass


def assert_plan_safe(g) -> None:
    order = g.graph["order"]
    if len(order) > CHECKED_UP_TO:
        return
    step = {name: i for i, name in enumerate(order)}
    end = len(order)
    tensors = [*g.graph["inputs"], *order]
    span = {t: (g.nodes[t]["offset"], g.nodes[t]["offset"] + g.nodes[t]["size"]) for t in tensors}
    for t in tensors:
        start, stop = span[t]
        shape = list(g.nodes[t]["shape"])
        if "padded_channels" in g.nodes[t]:  # stored NHWC with zero channels after its own
            assert g.nodes[t].get("layout") == "NHWC" and g.nodes[t]["padded_channels"] > shape[1], t
            shape[1] = g.nodes[t]["padded_channels"]
        assert stop - start == int(np.prod(shape)), f"{t}: planned size is not its element count"
        assert start >= 0 and stop <= g.graph["arena_size"], f"{t}: outside the arena"
    born = np.array([step.get(t, -1) for t in tensors])
    last = np.array([max([step[r] for r in g.successors(t) if r in step], default=born[i])
                     for i, t in enumerate(tensors)])
    last[[tensors.index(out) for out in g.graph["outputs"]]] = end
    lo, hi = (np.array([span[t][k] for t in tensors]) for k in (0, 1))
    index = {t: i for i, t in enumerate(tensors)}
    for writer in order:
        if "alias_of" in g.nodes[writer]:
            continue  # no kernel: it writes nothing
        j, w = step[writer], index[writer]
        clash = (born < j) & (j <= last) & (lo < hi[w]) & (lo[w] < hi)  # alive, and sharing bytes
        clash[w] = False
        for i in np.flatnonzero(clash):
            t = tensors[i]
            if j == last[i] and t in g.nodes[writer]["inputs"] and _same_bytes(span, t, writer):
                continue  # the writer reads t last and updates it in place
            raise UnsafePlan(f"{writer} (step {j}) overwrites {t}, still read at step {last[i]}")


def _same_bytes(span, a, b) -> bool:
    return span[a] == span[b]
