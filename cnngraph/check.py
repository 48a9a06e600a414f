"""`check`: numerical bisection. The compiled (fused, optimized) model and a float64 reference of
the raw, unoptimized network run on the same input; every node of the compiled model is compared
with the reference tensor of the last spec layer it implements, and the first node whose error
exceeds the tolerance is the fused kernel that lost the accuracy.

The reference is each layer's own PyTorch definition (its op's `torch_reference`) in float64, so
it shares no code with cnngraph's kernels, NumPy code or passes; `check` needs PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CnnGraphError
from .graph import in_shapes, layer_nodes
from .model import CompiledModel, build
from .ops.base import weight_key

# relative L2 error per node; a TF32 product carries about 5e-4, an fp16 store 2.4e-4, a bf16 one 2e-3
DEFAULT_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 5e-2}


@dataclass
class NodeCheck:
    node: str
    op: str                # the node's display op ("conv2d+batch_norm2d+relu")
    layers: list[str]      # the spec layers it implements; compared with the last one's reference
    max_abs_error: float
    rel_error: float       # ||compiled - reference|| / ||reference|| (absolute when the reference is 0)


@dataclass
class CheckReport:
    nodes: list[NodeCheck]
    tolerance: float

    @property
    def first_failure(self) -> NodeCheck | None:
        return next((n for n in self.nodes if not n.rel_error <= self.tolerance), None)  # NaN fails too

    def table(self) -> str:
        header = ("node", "op", "layers", "max abs error", "rel error")
        rows = [(n.node, n.op, ",".join(n.layers), f"{n.max_abs_error:.3g}", f"{n.rel_error:.3g}"
                 + ("  <- over" if not n.rel_error <= self.tolerance else "")) for n in self.nodes]
        widths = [min(48, max(len(str(r[i])) for r in [header, *rows])) for i in range(len(header))]
        lines = ["  ".join(str(c)[:w].ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        first = self.first_failure
        verdict = (f"first node over the tolerance {self.tolerance:g}: {first.node} ({first.op}), which fuses "
                   f"layers {', '.join(first.layers)}" if first else
                   f"every node within the tolerance {self.tolerance:g} of the float64 reference")
        return "\n".join([*lines, "", verdict])


def reference_outputs(model: CompiledModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every spec layer's output in float64: the raw graph, layer by layer, through each op's
    PyTorch definition, with the model's unoptimized weights."""
    try:
        import torch
    except ImportError:
        raise CnnGraphError("cnngraph check needs PyTorch as its float64 reference (pip install torch)") from None
    g = build(model.spec, model.batch_size)
    env = {name: torch.from_numpy(np.asarray(x, np.float64)) for name, x in inputs.items()}
    with torch.no_grad():
        for node in layer_nodes(g):
            layer = g.nodes[node]["compute"].spec
            weights = {suffix: torch.from_numpy(np.asarray(model.weights[weight_key(node, suffix)], np.float64))
                       for suffix in layer.weight_shapes(in_shapes(g, node))}
            env[node] = layer.torch_reference([env[i] for i in g.nodes[node]["inputs"]], weights)
    return {name: value.numpy() for name, value in env.items()}


def check(model: CompiledModel, inputs: dict[str, np.ndarray], tolerance: float | None = None) -> CheckReport:
    """Compare every node of `model` on `inputs` (float32 NCHW, by input name) with the float64
    reference of the layer it ends with."""
    tolerance = DEFAULT_TOLERANCE[model.precision] if tolerance is None else tolerance
    reference = reference_outputs(model, inputs)
    observed = model.backend.run_observed({k: np.ascontiguousarray(v, np.float32) for k, v in inputs.items()})
    g, rows = model.graph, []
    for node in g.graph["order"]:
        if node not in observed:
            continue  # an alias: its input's values, already compared
        want, got = reference[g.nodes[node]["layers"][-1]], observed[node].astype(np.float64)
        scale = np.linalg.norm(want)
        error = np.linalg.norm(got - want)
        rows.append(NodeCheck(node, g.nodes[node]["op"], list(g.nodes[node]["layers"]),
                              float(np.max(np.abs(got - want))) if got.size else 0.0,
                              float(error / scale) if scale > 0 else float(error)))
    return CheckReport(rows, tolerance)
