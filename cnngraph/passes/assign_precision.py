"""Give every node whose products are a matrix multiplication (conv and linear, not depthwise) the
network's precision; the rest stay fp32. Runs after the optimization passes, also when they are
off: the precision is a property of the compiled network, not an optimization.

At tf32 a tensor-core conv rounds its input to TF32 before multiplying it. Where every reader of a
tensor is such a conv, its writer stores it rounded instead (node attribute `tf32_stored`): the
same values reach the products, rounded once per element rather than once per block that copies
them (each input element is copied by every block whose window covers it), and those convs skip
their rounding (`conv_mma`'s `rounded_input`). The writer is a kernel that takes an epilogue, which
then ends with the rounding: a conv or linear layer (`NodeLowering.gemm_epilogue`), unless it pools
its output by averaging (the epilogue runs before the pool; a max of rounded values is the rounded
max), or an elementwise op (`NodeLowering.elementwise`: a batch norm or activation before a conv).
"""

from __future__ import annotations

import networkx as nx

from ..graph import compute_of, layer_nodes, own_in_shapes, set_compute
from ..ops import ELEMENTWISE, GEMM
from ..precision import check_precision
from .assign_layout import read_by_convs_alone


def assign_precision(g: nx.DiGraph, precision: str) -> list[str]:
    g.graph["precision"] = check_precision(precision)
    changes = []
    for node in layer_nodes(g):
        compute = compute_of(g, node)
        if precision != "fp32" and compute.spec.runs_as_gemm(own_in_shapes(g, node)):
            set_compute(g, node, compute.but(precision=precision))
            changes.append(f"{node}: {precision}")
    if precision == "tf32":
        for node in filter(lambda n: _may_store_tf32(g, n), layer_nodes(g)):
            g.nodes[node]["tf32_stored"] = True
            changes.append(f"{node}: stored rounded to TF32")
    return changes


def _may_store_tf32(g: nx.DiGraph, tensor: str) -> bool:
    """`tensor` is written by an epilogue (of a conv, a linear layer or an elementwise op), is not
    a network output, and only tensor-core convs read it, as their ungated input (not as a residual)."""
    compute = compute_of(g, tensor)
    averaged = compute.pool is not None and compute.pool.spec.op != "max_pool2d"
    writer = compute.has(GEMM) or compute.has(ELEMENTWISE)
    return (writer and not averaged and tensor not in g.graph["outputs"]
            and g.out_degree(tensor) > 0 and read_by_convs_alone(g, tensor, one_group=False))
