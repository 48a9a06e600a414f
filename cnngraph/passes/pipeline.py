"""The optimization pipeline: a flat list of small passes, run in order, each recording what it
changed; the graph's invariants are checked after every pass."""

from __future__ import annotations

import networkx as nx

from ..errors import InternalError
from .eliminate_dead_code import eliminate_dead_code
from .fold_batch_norm import fold_batch_norm
from .fold_pad import fold_pad
from .fuse_activation import fuse_activation
from .fuse_batch_norm_epilogue import fuse_batch_norm_epilogue
from .fuse_gate import fuse_gate
from .fuse_pool import fuse_pool
from .fuse_residual_add import fuse_residual_add
from .remove_dropout import remove_dropout

PIPELINE = [
    eliminate_dead_code,  # layers no output depends on
    remove_dropout,       # identity at inference
    fold_pad,             # zero pad -> conv: the conv pads its own input (asymmetrically if need be)
    fold_batch_norm,      # conv -> batch_norm becomes one conv with adjusted weight and bias
    fuse_residual_add,    # conv -> add(., residual): the add moves into the conv's epilogue
    fuse_activation,      # conv/linear/elementwise -> activation: into the activation field or the epilogue
    fuse_batch_norm_epilogue,  # conv -> relu -> batch_norm: the BN's scale + shift joins the epilogue
    fuse_pool,            # conv -> non-overlapping pool: the conv result never goes to memory
    fuse_gate,            # x * se_gate -> conv: the conv scales its input as it loads it
]


def optimize_graph(g: nx.DiGraph) -> nx.DiGraph:
    """Run every pass on a copy of `g`; the log lands in `g.graph["passes"]` as (pass, changes)."""
    g = g.copy()
    g.graph["fusion_report"] = []
    layers_before = sorted(name for _, names in g.nodes(data="layers") for name in names)
    log = []
    for run in PIPELINE:
        log.append((run.__name__, run(g)))
        check_invariants(g, layers_before, run.__name__)
    g.graph["passes"] = log
    return g


def check_invariants(g: nx.DiGraph, layers: list[str], after: str) -> None:
    """Acyclic, every node shaped, every spec layer implemented by exactly one node (or removed as
    dead code), edges match inputs."""
    problems = []
    if not nx.is_directed_acyclic_graph(g):
        problems.append("the graph has a cycle")
    problems += [f"node {n} has no shape" for n, shape in g.nodes(data="shape") if shape is None]
    implemented = [name for _, names in g.nodes(data="layers") for name in names] + g.graph.get("dead_layers", [])
    if sorted(implemented) != layers:
        problems.append("spec layers are not each implemented by exactly one node")
    for n, inputs in g.nodes(data="inputs"):
        if set(inputs) != set(g.predecessors(n)):
            problems.append(f"node {n}: inputs {inputs} disagree with its edges")
    missing = [o for o in g.graph["outputs"] if o not in g]
    problems += [f"output {o} is gone" for o in missing]
    if problems:
        raise InternalError(f"pass {after} broke the graph: " + "; ".join(problems))
