"""Autotuning of conv/linear schedules: every candidate schedule of every node (schedules.py) is
lowered, timed on the device by a callback of the backend, and the fastest kept. Choices are kept
in the kernel cache by (device, candidate kernels), so a layer tuned before is not timed again."""

from __future__ import annotations

import json
import statistics
from typing import Callable

import networkx as nx

from ..kernel_cache import cache_key, entry_path, read_entry, write_entry
from .lower import Launch, lower_node
from .schedules import Schedule

# (node, pick, launches, constants) -> timed by the backend: node -> (fastest pick, its ms, the default's ms)
Candidate = tuple[str, int, list[Launch], dict]
Timer = Callable[[list[Candidate]], dict[str, tuple[int, float, float]]]


def autotune(g: nx.DiGraph, device_identity: str, compile_options: tuple, time: Timer
             ) -> tuple[dict[str, tuple[int, float, float]], dict[str, Schedule]]:
    """node -> (chosen pick, its ms, the default's ms), and node -> the chosen schedule."""
    candidates: list[Candidate] = []
    keys, counts = {}, {}
    for index, node in enumerate(g.graph["order"]):
        counts[node] = lower_node(g, node, {}, 0)[0].schedules
        if counts[node] < 2:
            continue
        bodies = []
        for pick in range(counts[node]):
            constants: dict = {}
            launches = lower_node(g, node, constants, pick)
            bodies += [launch.body for launch in launches]
            for launch in launches:  # unique names across every candidate in the module
                launch.rename(f"{launch.kernel}_n{index}_s{pick}")
            candidates.append((node, pick, launches, constants))
        keys[node] = cache_key("autotune", device_identity, *compile_options, *bodies)
    chosen = {}
    for node, key in keys.items():
        entry = read_entry(path) if (path := entry_path("autotune", key)) else None
        if (choice := cached_choice(entry, counts[node])) is not None:
            chosen[node] = choice
    untimed = [c for c in candidates if c[0] not in chosen]
    timed = time(untimed) if untimed else {}
    for node, choice in timed.items():
        if path := entry_path("autotune", keys[node]):
            write_entry(path, json.dumps(choice).encode())
    chosen.update(timed)
    schedule_of = {(node, pick): launches[0].schedule for node, pick, launches, _ in candidates}
    return chosen, {node: schedule_of[node, pick] for node, (pick, _, _) in chosen.items()}


def cached_choice(entry: bytes | None, count: int) -> tuple[int, float, float] | None:
    """A cached autotuning choice (pick, its ms, the default's ms), or None when there is none or
    it is not one this node could have made."""
    try:
        pick, ms, default_ms = json.loads(entry) if entry is not None else (None, None, None)
    except (ValueError, TypeError):
        return None
    valid = (type(pick) is int and 0 <= pick < count and all(type(t) is float for t in (ms, default_ms)))
    return (pick, ms, default_ms) if valid else None


def choose(samples: dict[int, list[float]]) -> tuple[int, float, float]:
    """(pick, its median ms, the default's median ms) from each candidate pick's timings: the
    fastest median, but only when it beats the default's (pick 0) by more than the noise of both
    (the spread of their samples); else the default. So two tuning runs agree: a candidate within
    the noise of the default never wins by chance."""
    median = {pick: statistics.median(times) for pick, times in samples.items()}
    spread = {pick: max(times) - min(times) for pick, times in samples.items()}
    best = min(median, key=lambda pick: (median[pick], pick))
    if best != 0 and median[0] - median[best] > spread[0] + spread[best]:
        return best, median[best], median[0]
    return 0, median[0], median[0]
