"""`export_onnx`: a spec and its weights as a standard ONNX model, for ONNX Runtime and Netron.

One ONNX node per layer, named after the layer, writing a tensor named after the layer; a fused
`activation` field adds its own node ("<layer>:relu") after the conv or linear. Weights become
initializers under their cnngraph (= PyTorch) keys. The batch dimension is the symbol "N".

Opset 17 (opset 20 when the network uses GELU, which has its own op from opset 20 on). With
`annotate`, every node of a layer the optimizer fused carries what it became in its
`metadata_props`: `cnngraph.fused_op` ("conv2d+relu+max_pool2d") and `cnngraph.fused_layers`
(the member layers, as a JSON list).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np

from ..files import atomic_write
from ..model import as_spec, build, plan, require_flag
from ..ops.base import weight_key
from ..spec import NetworkSpec
from ..weights import check_weights, expected_shapes, init_weights, load_weights
from .onnx_import import require_onnx

OPSET, GELU_OPSET = 17, 20
IR_VERSION = 10  # the first with metadata_props on nodes (onnx 1.16); ONNX Runtime 1.18 and newer read it
FLOAT = 1  # onnx.TensorProto.FLOAT


def export_onnx(spec: NetworkSpec | str | Path | Mapping, path: str | Path,
                weights: str | Path | Mapping[str, np.ndarray] | None = None, annotate: bool = True, seed: int = 0):
    """Write `spec` with `weights` (a file, a dict, or None for the seeded initialisation `compile`
    uses) as an ONNX model at `path`, atomically. Returns the ModelProto."""
    model = to_onnx(spec, weights, annotate, seed)
    data = model.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return model


def to_onnx(spec, weights=None, annotate: bool = True, seed: int = 0):
    """The ONNX ModelProto of `spec` (see `export_onnx`)."""
    onnx = require_onnx()
    from onnx import helper

    spec = as_spec(spec)
    require_flag("annotate", annotate)
    g = build(spec, 1)
    expected = expected_shapes(g)
    if weights is None:
        bound = init_weights(g, seed)
    else:  # the keys checked before any array is read, as compile does
        bound = check_weights(load_weights(weights, expected), expected,
                              None if isinstance(weights, Mapping) else str(weights))
    uses_gelu = any(layer.op == "gelu" or getattr(getattr(layer, "activation", None), "op", None) == "gelu"
                    for layer in spec.layers)
    ex = Exporter(bound, GELU_OPSET if uses_gelu else OPSET,
                  taken=[i.name for i in spec.inputs] + [layer.name for layer in spec.layers])
    for layer in spec.layers:
        ex.layer(layer, g.nodes[layer.name]["shape"][1:])
    if annotate:
        fused = plan(spec, 1, weights=bound).graph
        ex.annotate(fused)
    value = lambda name, shape: helper.make_tensor_value_info(name, FLOAT, ["N", *shape])  # noqa: E731
    outputs = set(spec.output_names)
    graph = helper.make_graph(
        ex.nodes, spec.name,
        inputs=[value(i.name, i.shape) for i in spec.inputs],
        outputs=[value(name, g.nodes[name]["shape"][1:]) for name in spec.output_names],
        initializer=[onnx.numpy_helper.from_array(np.asarray(array), name) for name, array in ex.initializers.items()],
        value_info=[value(name, shape) for name, shape in ex.shapes.items() if name not in outputs])
    from .. import __version__  # here, not at the top: the package imports this module while it loads
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ex.opset)], ir_version=IR_VERSION,
                             producer_name="cnngraph", producer_version=__version__)


class Exporter:
    """Collects nodes, initializers and tensor shapes, layer by layer.

    A layer's output tensor is named after the layer and a network input after itself; every name
    the exporter makes up (weights "c.weight", constants "c:min", intermediate tensors "c:conv2d")
    that a user's name already holds, or that was made before, gets a suffix "~1", "~2", ... so
    the graph never has two tensors of one name (`unique`); node names likewise. Ops use the names
    these calls return."""

    def __init__(self, weights: dict[str, np.ndarray], opset: int = OPSET, taken: list[str] = ()):
        self.weights, self.opset = weights, opset  # opset: ops export their inputs and attributes for it
        self.nodes, self.initializers, self.shapes = [], {}, {}
        self.by_layer: dict[str, list] = {}  # layer -> its ONNX nodes, for the annotation
        self.user_names = set(taken)         # the spec's input and layer names: the tensors they name
        self.made: set[str] = set()
        self.reserved: set[str] = set()      # made by `unique` for a node output not written yet
        self.node_names: set[str] = set()    # node names are a namespace of their own, unique too

    def unique(self, name: str) -> str:
        """`name`, or `name~k` for the smallest k that no tensor has yet; recorded as taken."""
        candidate, k = name, 0
        while candidate in self.user_names or candidate in self.made:
            k += 1
            candidate = f"{name}~{k}"
        self.made.add(candidate)
        return candidate

    def node(self, layer: str, op_type: str, inputs: list[str], output: str, shape, name: str | None = None, **attrs):
        from onnx import helper

        if output in self.reserved:
            self.reserved.discard(output)
        elif output != layer:  # a layer's own tensor keeps its name; made-up ones are made unique
            output = self.unique(output)
        node_name, k = name or layer, 0
        while node_name in self.node_names:
            k += 1
            node_name = f"{name or layer}~{k}"
        self.node_names.add(node_name)
        made = helper.make_node(op_type, inputs, [output], name=node_name, **attrs)
        self.nodes.append(made)
        self.by_layer.setdefault(layer, []).append(made)
        self.shapes[output] = tuple(shape)
        return output

    def const(self, name: str, value, dtype: str = "float32") -> str:
        name = self.unique(name)
        self.initializers[name] = np.asarray(value, dtype=dtype)
        return name

    def weight_inputs(self, layer, suffixes) -> list[str]:
        """Initializer names of the layer's weights that exist, in `suffixes` order (their keys,
        unless a tensor already has that name)."""
        names = []
        for key in (weight_key(layer.name, s) for s in suffixes):
            if key in self.weights:
                names.append(self.unique(key))
                self.initializers[names[-1]] = self.weights[key]
        return names

    def layer(self, layer, shape: tuple) -> None:
        """The nodes of one layer, as its op exports itself; a fused `activation` field adds its own."""
        name, xs = layer.name, list(layer.inputs)
        act = getattr(layer, "activation", None)
        out = name
        if act is not None:  # the activation node writes the layer's tensor
            out = self.unique(f"{name}:{layer.op}")
            self.reserved.add(out)
        layer.to_onnx(self, xs, out, shape)
        if act is not None:
            act.export_onnx(self, [out], name, shape, layer=name, name=f"{name}:{act.op}")

    def annotate(self, g) -> None:
        """Mark the nodes of every layer the optimizer fused with the fused op and its layers."""
        for _, data in g.nodes(data=True):
            layers = data.get("layers") or []
            if len(layers) < 2 and "+" not in data["op"]:
                continue
            for layer in layers:
                for made in self.by_layer.get(layer, []):
                    made.metadata_props.add(key="cnngraph.fused_op", value=data["op"])
                    made.metadata_props.add(key="cnngraph.fused_layers", value=json.dumps(layers))
