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
from ..model import as_spec, build, compile
from ..ops.base import pair
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
    g = build(spec, 1)
    if weights is None:
        bound = init_weights(g, seed)
    else:
        bound = check_weights(load_weights(weights), expected_shapes(g),
                              None if isinstance(weights, Mapping) else str(weights))
    ex = Exporter(bound)
    for layer in spec.layers:
        ex.layer(layer, g.nodes[layer.name]["shape"][1:])
    if annotate:
        fused = compile(spec, 1, device="cpu", weights=bound).graph
        ex.annotate(fused)
    value = lambda name, shape: helper.make_tensor_value_info(name, FLOAT, ["N", *shape])  # noqa: E731
    outputs = set(spec.output_names)
    graph = helper.make_graph(
        ex.nodes, spec.name,
        inputs=[value(i.name, i.shape) for i in spec.inputs],
        outputs=[value(name, g.nodes[name]["shape"][1:]) for name in spec.output_names],
        initializer=[onnx.numpy_helper.from_array(np.asarray(array), name) for name, array in ex.initializers.items()],
        value_info=[value(name, shape) for name, shape in ex.shapes.items() if name not in outputs])
    opset = GELU_OPSET if ex.uses_gelu else OPSET
    from .. import __version__  # here, not at the top: the package imports this module while it loads
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
                             producer_name="cnngraph", producer_version=__version__)


class Exporter:
    """Collects nodes, initializers and tensor shapes, layer by layer."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes, self.initializers, self.shapes = [], {}, {}
        self.by_layer: dict[str, list] = {}  # layer -> its ONNX nodes, for the annotation
        self.uses_gelu = False

    def node(self, layer: str, op_type: str, inputs: list[str], output: str, shape, name: str | None = None, **attrs):
        from onnx import helper

        made = helper.make_node(op_type, inputs, [output], name=name or layer, **attrs)
        self.nodes.append(made)
        self.by_layer.setdefault(layer, []).append(made)
        self.shapes[output] = tuple(shape)
        return output

    def const(self, name: str, value) -> str:
        self.initializers[name] = np.asarray(value, dtype=np.float32)
        return name

    def layer(self, layer, shape: tuple) -> None:
        name, xs = layer.name, list(layer.inputs)
        act = getattr(layer, "activation", None)
        out = f"{name}:{layer.op}" if act is not None else name  # the activation node writes the layer's tensor
        export = EXPORTS[layer.op] if layer.op in EXPORTS else export_activation
        export(self, layer, xs, out, shape)
        if act is not None:
            export_activation(self, act, [out], name, shape, layer=name, node_name=f"{name}:{act.op}")

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


def weight_inputs(ex: Exporter, layer, suffixes) -> list[str]:
    """Initializer names of the layer's weights that exist, in `suffixes` order."""
    names = [f"{layer.name}.{s}" for s in suffixes]
    for key in names:
        if key in ex.weights:
            ex.initializers[key] = ex.weights[key]
    return [key for key in names if key in ex.weights]


def export_conv(ex, layer, xs, out, shape):
    top, bottom, left, right = layer.pads()
    if layer.padding == "same" and pair(layer.dilation) == (1, 1):
        padding = {"auto_pad": "SAME_UPPER"}  # as PyTorch exports it (ONNX Runtime has no dilated SAME_UPPER)
    else:
        padding = {"pads": [top, left, bottom, right]}
    ex.node(layer.name, "Conv", [*xs, *weight_inputs(ex, layer, ("weight", "bias"))], out, shape,
            kernel_shape=list(pair(layer.kernel_size)), strides=list(pair(layer.stride)),
            dilations=list(pair(layer.dilation)), group=layer.groups, **padding)


def export_linear(ex, layer, xs, out, shape):
    ex.node(layer.name, "Gemm", [*xs, *weight_inputs(ex, layer, ("weight", "bias"))], out, shape, transB=1)


def export_batch_norm(ex, layer, xs, out, shape):
    keys = ("weight", "bias", "running_mean", "running_var")
    ex.node(layer.name, "BatchNormalization", [*xs, *weight_inputs(ex, layer, keys)], out, shape,
            epsilon=float(layer.eps))


def export_pool(ex, layer, xs, out, shape):
    (kh, kw), stride, (ph, pw) = layer.geometry()
    attrs = dict(kernel_shape=[kh, kw], strides=list(stride), pads=[ph, pw, ph, pw], ceil_mode=int(layer.ceil_mode))
    if layer.op == "avg_pool2d":
        attrs["count_include_pad"] = int(layer.count_include_pad)
    ex.node(layer.name, "MaxPool" if layer.op == "max_pool2d" else "AveragePool", xs, out, shape, **attrs)


def export_add(ex, layer, xs, out, shape):
    ex.node(layer.name, "Add" if len(xs) == 2 else "Sum", xs, out, shape)


def export_dropout(ex, layer, xs, out, shape):
    ex.node(layer.name, "Dropout", [*xs, ex.const(f"{layer.name}:ratio", layer.p)], out, shape)


def export_upsample(ex, layer, xs, out, shape):
    # asymmetric + floor picks input pixel floor(i / scale): upsample2d's nearest
    scales = ex.const(f"{layer.name}:scales", [1, 1, *pair(layer.scale_factor)])
    ex.node(layer.name, "Resize", [*xs, "", scales], out, shape, mode="nearest",
            coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def export_activation(ex, act, xs, out, shape, layer: str | None = None, node_name: str | None = None):
    """An activation (a layer, or the `activation` field of `layer`)."""
    layer = layer or act.name
    name = node_name or layer
    op = act.op
    if op == "relu6":
        bounds = [ex.const(f"{name}:min", 0.0), ex.const(f"{name}:max", 6.0)]
        ex.node(layer, "Clip", [*xs, *bounds], out, shape, name=name)
    elif op == "leaky_relu":
        ex.node(layer, "LeakyRelu", xs, out, shape, name=name, alpha=float(act.negative_slope))
    elif op == "gelu":
        ex.uses_gelu = True
        ex.node(layer, "Gelu", xs, out, shape, name=name, approximate=act.approximate)
    elif op == "silu":  # no ONNX op before opset 24: x * sigmoid(x)
        gate = ex.node(layer, "Sigmoid", xs, f"{name}:sigmoid", shape, name=f"{name}:sigmoid")
        ex.node(layer, "Mul", [xs[0], gate], out, shape, name=name)
    else:
        ex.node(layer, ACTIVATION_OPS[op], xs, out, shape, name=name)


ACTIVATION_OPS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "hardswish": "HardSwish"}

EXPORTS = {
    "conv2d": export_conv, "linear": export_linear, "batch_norm2d": export_batch_norm,
    "max_pool2d": export_pool, "avg_pool2d": export_pool, "add": export_add, "dropout": export_dropout,
    "upsample2d": export_upsample,
    "global_avg_pool2d": lambda ex, layer, xs, out, shape: ex.node(layer.name, "GlobalAveragePool", xs, out, shape),
    "flatten": lambda ex, layer, xs, out, shape: ex.node(layer.name, "Flatten", xs, out, shape, axis=1),
    "concat": lambda ex, layer, xs, out, shape: ex.node(layer.name, "Concat", xs, out, shape, axis=1),
    "softmax": lambda ex, layer, xs, out, shape: ex.node(layer.name, "Softmax", xs, out, shape, axis=layer.axis),
}
