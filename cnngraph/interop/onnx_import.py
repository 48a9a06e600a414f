"""`from_onnx`: an ONNX model as a cnngraph spec and its weights.

The graph is read node by node, in its (topological) order. A node becomes a layer, an alias
(Identity), or a constant: initializers, Constant nodes and the shape arithmetic PyTorch emits for
`x.view(x.size(0), -1)` are evaluated here, with the batch size kept as the symbol "N". A few
multi-node patterns are matched first and become one layer each: x*sigmoid(x) (silu), the erf
formula of GELU, MatMul followed by a bias Add (linear).

Shapes are inferred while the layers are made, with cnngraph's own shape rules, so a problem is
reported at the ONNX node that caused it, and are checked against the shapes the file declares.
Every node that cannot be expressed is collected, so one error lists them all.
"""

from __future__ import annotations

import math
import unicodedata
from collections import defaultdict
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from ..errors import CnnGraphError, ShapeError, SpecError, quote
from ..ops import ACTIVATION_OPS, GEMM_OPS, OPS, fmt_shape
from ..ops.conv import conv_out_size, same_pad
from ..spec import NetworkSpec, parse_spec

class _Batch:
    """The batch size in shape arithmetic: what Shape(x)[0] evaluates to (unknown until compile)."""

    def __repr__(self) -> str:
        return "N"


BATCH = _Batch()
ONNX_DOMAINS = ("", "ai.onnx")
MAX_PROBLEMS_SHOWN = 20  # nodes listed in the error; the rest are counted


class Unsupported(Exception):
    """Why one node cannot be expressed; collected, so the error names every such node."""


class FollowsProblem(Exception):
    """A node reads the output of a node already reported: it is skipped, not reported again."""


def require_onnx():
    """The `onnx` module, imported on first use: it is an optional dependency."""
    try:
        import onnx
    except ImportError:
        raise CnnGraphError("ONNX support needs the onnx package: pip install onnx") from None
    return onnx


def from_onnx(path: str | Path) -> tuple[NetworkSpec, dict[str, np.ndarray]]:
    """The spec and float32 weights (keyed `<layer>.weight`, `.bias`, `.running_mean`, `.running_var`)
    of the ONNX model at `path`. Raises a one-line SpecError (or ShapeError) naming the file and the
    nodes at fault."""
    model = load_model(path)
    return Importer(model, str(path)).run()


# --- reading the file -----------------------------------------------------------------------------

def load_model(path: str | Path):
    """The parsed ModelProto, external data included, or a one-line error for a bad file."""
    onnx = require_onnx()
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    file = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise SpecError(f"cannot read the ONNX model: {err.strerror or err}", file=file) from None
    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise SpecError(f"not a valid ONNX model (truncated or corrupt file?): {err}", file=file) from None
    if not model.HasField("graph") or not model.graph.output:
        raise SpecError("not a valid ONNX model (truncated or corrupt file?): it holds no graph with outputs",
                        file=file)
    if any(uses_external_data(t) for t in model.graph.initializer):
        try:
            load_external_data_for_model(model, str(Path(path).parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as err:  # the checker's: a data file missing
            raise SpecError(f"cannot read the model's external data: {getattr(err, 'strerror', None) or err}",
                            file=file) from None
    return model


def attributes(node) -> dict:
    """A node's attributes as Python values: strings decoded, tensors as arrays."""
    from onnx import helper, numpy_helper

    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif type(value).__name__ == "TensorProto":
            value = numpy_helper.to_array(value)
        out[attr.name] = value
    return out


def declared_dims(value_info) -> list | None:
    """The dims a ValueInfoProto declares (int, a symbol's name, or None), or None without a shape."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def node_label(node) -> str:
    """How messages name a node: its name, or the tensor it writes when it has none."""
    if node.name or not node.output:
        return quote(node.name)
    return f"(unnamed, writes {quote(node.output[0])})"


def fmt_dims(dims: list) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in dims) + ")"


# --- naming -----------------------------------------------------------------------------------------

def module_path(scopes: list[str]) -> str:
    """PyTorch's scope names as one module path. Each scope repeats the tail of the one before it
    when modules are nested in containers: ["layer1", "layer1.0", "conv1"] -> "layer1.0.conv1"."""
    parts: list[str] = []
    for scope in scopes:
        new = scope.split(".")
        overlap = max((k for k in range(1, min(len(parts), len(new)) + 1) if parts[-k:] == new[:k]), default=0)
        parts += new[overlap:]
    return ".".join(parts)


def layer_name(node) -> str:
    """A layer name from an ONNX node name. PyTorch's "/layer1/layer1.0/conv1/Conv" becomes the module
    path "layer1.0.conv1", so weight keys match the module's `state_dict()`; "/Conv_3" (a functional
    call at the top level) becomes "Conv_3"; other names are kept, cleaned (`clean_name`). A node
    without a name is named after its output."""
    raw = node.name or (node.output[0] if node.output else "")
    if raw.startswith("/"):
        *scopes, op = [part for part in raw.split("/") if part] or [""]
        raw = module_path(scopes) if scopes else op
    return clean_name(raw) or node.op_type.lower()


def clean_name(text: str) -> str:
    """Spaces, line breaks, control and format characters (Unicode categories Z* and C*) become "_":
    names end up in messages, tables and weight keys."""
    return "".join("_" if unicodedata.category(c)[0] in "CZ" else c for c in text)[:200]


# --- the importer -------------------------------------------------------------------------------------

class Importer:
    def __init__(self, model, file: str):
        self.file, self.graph = file, model.graph
        self.nodes = list(self.graph.node)  # one Python object per node, so id(node) is stable
        self.opset = next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), None)
        if self.opset is None:
            raise SpecError("the model declares no ai.onnx opset (truncated or corrupt file?)", file=file)
        self.consts: dict[str, np.ndarray] = {}      # tensor -> value known now (initializers, shape arithmetic)
        self.source: dict[str, str] = {}             # tensor -> the layer or network input computing it
        self.shapes: dict[str, tuple] = {}           # tensor -> per-sample shape
        self.poisoned: set[str] = set()              # outputs of nodes that could not be converted
        self.layers: list[dict] = []
        self.weights: dict[str, np.ndarray] = {}
        self.problems: list[str] = []
        self.taken: set[str] = set()
        self.outputs = [o.name for o in self.graph.output]
        self.declared = {v.name: declared_dims(v) for v in [*self.graph.value_info, *self.graph.output]}
        self.producer, self.consumers = {}, defaultdict(list)
        for node in self.nodes:
            for t in node.output:
                self.producer[t] = node
            for t in node.input:
                self.consumers[t].append(node)
        self._read_initializers()

    def _read_initializers(self) -> None:
        from onnx import numpy_helper

        for init in self.graph.initializer:
            try:
                self.consts[init.name] = numpy_helper.to_array(init)
            except (ValueError, TypeError) as err:
                raise SpecError(f'initializer "{init.name}" is corrupt (truncated file?): {err}', file=self.file) from None
        for node in self.nodes:  # Constant nodes too, so the pattern matchers can read them
            if node.op_type == "Constant" and node.domain in ONNX_DOMAINS and node.output:
                try:
                    self.consts[node.output[0]] = constant_value(node)
                except Unsupported:
                    pass  # reported when the walk reaches it

    def run(self) -> tuple[NetworkSpec, dict[str, np.ndarray]]:
        inputs = self._network_inputs()
        deferred, skipped = match_patterns(self)
        for node in self.nodes:
            if id(node) in skipped:
                continue
            convert = deferred.get(id(node)) or (CONVERTERS.get(node.op_type) if node.domain in ONNX_DOMAINS else None)
            if convert is None:
                op = node.op_type if node.domain in ONNX_DOMAINS else f"{node.domain}.{node.op_type}"
                self._problem(node, "unsupported op", op)
                continue
            try:
                if not node.output:
                    raise Unsupported("has no output (corrupt file?)")
                if any(t in self.poisoned for t in node.input):
                    raise FollowsProblem
                convert(self, node)
            except Unsupported as why:
                self._problem(node, str(why))
            except FollowsProblem:
                self.poisoned.update(node.output)
            except (TypeError, ValueError, IndexError, KeyError, AttributeError) as err:  # a hand-made or corrupt node
                self._problem(node, f"malformed attributes or inputs ({type(err).__name__}: {err})")
        outputs = self._network_outputs()
        if self.problems:
            shown = self.problems[:MAX_PROBLEMS_SHOWN]
            more = len(self.problems) - len(shown)
            raise SpecError(f"{len(self.problems)} ONNX node(s) cannot be expressed in cnngraph: {'; '.join(shown)}"
                            + (f"; and {more} more" if more else "")
                            + f" (supported ops: {', '.join(SUPPORTED_OPS)})", file=self.file)
        layers = fuse_activations(self.layers, outputs)
        name = self.graph.name if self.graph.name not in ("", "main_graph") else Path(self.file).stem  # torch names every graph main_graph
        spec = {"format_version": 1, "name": clean_name(name) or "network", "inputs": inputs, "layers": layers,
                "outputs": outputs}
        try:
            return parse_spec(spec), self.weights
        except CnnGraphError as err:  # every layer was validated on the way: this would be a bug here
            raise SpecError(f"the imported network is not a valid spec: {err}", file=self.file) from None

    def _problem(self, node, why: str, op: str | None = None) -> None:
        self.problems.append(f"{node_label(node)} ({op or node.op_type}): {why}")
        self.poisoned.update(node.output)

    def _network_inputs(self) -> list[dict]:
        """Graph inputs that are not initializers (old exporters list weights as inputs too): their
        per-sample shapes, the batch dimension dropped."""
        inputs = []
        for value in self.graph.input:
            if value.name in self.consts:
                continue
            where = f'input "{value.name}"'
            if value.type.tensor_type.elem_type != 1:
                raise SpecError(f"{where} must be float32 (cnngraph runs float32 tensors)", file=self.file)
            dims = declared_dims(value)
            if dims is None or len(dims) not in (2, 4) or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
                shown = "no shape" if dims is None else fmt_dims(dims)
                raise SpecError(f"{where} must have a known shape (N, C, H, W) or (N, F), got {shown}", file=self.file)
            shape, name = tuple(dims[1:]), self._unique(clean_name(value.name) or "input")
            self.source[value.name], self.shapes[value.name] = name, shape
            self.taken.add(name)
            inputs.append({"name": name, "shape": list(shape)})
        if not inputs:
            raise SpecError("the model has no input tensor", file=self.file)
        return inputs

    def _network_outputs(self) -> list[str]:
        """The layers computing the graph's outputs (the spec names outputs by layer)."""
        outputs: dict[str, str] = {}  # layer -> the ONNX output it computes
        for name in self.outputs:
            if name in self.poisoned:
                continue
            layer = self.source.get(name)
            if layer is None or name in self.consts or any(name == i.name for i in self.graph.input):
                self.problems.append(f"output {quote(name)}: not computed by a layer (a constant or a network input)")
            elif layer in outputs:
                self.problems.append(f"output {quote(name)}: the same tensor as output {quote(outputs[layer])}")
            else:
                outputs[layer] = name
        return list(outputs)

    # --- what converters use -------------------------------------------------------------------
    def value(self, node, index: int, what: str, optional: bool = False) -> np.ndarray | None:
        """Input `index` of `node` as a constant; None when absent and optional."""
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            if optional:
                return None
            raise Unsupported(f"needs its {what} input")
        if name not in self.consts:
            self._defined(name)
            raise Unsupported(f"its {what} must be a constant (an initializer), not computed by the network")
        return self.consts[name]

    def data(self, node, index: int = 0) -> str:
        """Input `index` of `node`: a tensor the network computes (a layer or a network input)."""
        return self.tensor(node.input[index] if index < len(node.input) else "")

    def tensor(self, name: str) -> str:
        """`name`, checked to be a tensor the network computes."""
        if not name:
            raise Unsupported("lacks a data input")
        if name in self.consts:
            raise Unsupported(f'input "{name}" is a constant; cnngraph layers read tensors the network computes')
        self._defined(name)
        return name

    def _defined(self, name: str) -> None:
        if name in self.poisoned:
            raise FollowsProblem
        if name not in self.source and name not in self.consts:
            raise SpecError(f'tensor "{name}" is read before any node, input or initializer defines it '
                            "(truncated or corrupt file?)", file=self.file)

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def only_consumer(self, tensor: str, op_type: str):
        """The one node reading `tensor` when it is an `op_type` and `tensor` is no network output."""
        readers = self.consumers.get(tensor, [])
        if len(readers) == 1 and readers[0].op_type == op_type and tensor not in self.outputs:
            return readers[0]
        return None

    def unused(self, node, index: int) -> bool:
        name = node.output[index] if index < len(node.output) else ""
        return not name or (not self.consumers.get(name) and name not in self.outputs)

    def add_layer(self, node, layer: dict, inputs: list[str], weights: dict | None = None) -> None:
        """A layer computing `node`'s first output from the tensors `inputs`; checked and shaped now."""
        name = self._unique(layer_name(node))
        layer = {"op": layer["op"], "name": name, "inputs": [self.source[t] for t in inputs],
                 **{k: v for k, v in layer.items() if k != "op"}}
        in_shapes = [self.shapes[t] for t in inputs]
        model, shape = infer_shape(layer, in_shapes)
        weights = weights or {}
        for suffix, expected in model.weight_shapes(in_shapes).items():
            if suffix in weights and tuple(weights[suffix].shape) != tuple(expected):
                raise Unsupported(f"its {suffix} has shape {list(weights[suffix].shape)}; "
                                  f"for input {fmt_shape(in_shapes[0])} it must be {list(expected)}")
        out = node.output[0]
        self._check_declared(node, out, shape)
        self.taken.add(name)
        self.source[out], self.shapes[out] = name, shape
        self.layers.append(layer)
        for suffix, array in weights.items():
            self.weights[f"{name}.{suffix}"] = np.ascontiguousarray(array, dtype=np.float32)

    def alias(self, node, tensor: str) -> None:
        """`node`'s output is `tensor` under another name (Identity)."""
        out = node.output[0]
        self._check_declared(node, out, self.shapes[tensor])
        self.source[out], self.shapes[out] = self.source[tensor], self.shapes[tensor]

    def constant(self, node, value: np.ndarray) -> None:
        self.consts[node.output[0]] = value

    def _unique(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        return name

    def _check_declared(self, node, tensor: str, shape: tuple) -> None:
        dims = self.declared.get(tensor)
        if dims is None:
            return
        if len(dims) != len(shape) + 1 or any(isinstance(d, int) and d != s for d, s in zip(dims[1:], shape)):
            raise ShapeError(f"node {node_label(node)} ({node.op_type}): the model declares shape {fmt_dims(dims)} "
                             f'for "{tensor}", but cnngraph computes {fmt_shape(shape)}', file=self.file)


def infer_shape(layer: dict, in_shapes: list[tuple]):
    """The layer validated by its op's model, and its per-sample output shape; or Unsupported."""
    try:
        model = OPS[layer["op"]].model_validate(layer)
    except ValidationError as err:
        e = err.errors(include_url=False)[0]
        field = (e.get("ctx") or {}).get("field") or ".".join(str(p) for p in e["loc"])
        message = e["msg"].removeprefix("Value error, ")
        raise Unsupported(f"{layer['op']} {field}: {message}" if field else f"{layer['op']}: {message}") from None
    try:
        return model, tuple(model.infer_shape(in_shapes))
    except ShapeError as err:
        raise Unsupported(err.message) from None


def fuse_activations(layers: list[dict], outputs: list[str]) -> list[dict]:
    """conv2d or linear followed by its only reader, an activation layer, becomes one layer with an
    `activation` field (as a spec writes Conv + ReLU). Not when the activation is a network output,
    so output names survive."""
    readers = defaultdict(int)
    for layer in layers:
        for src in layer["inputs"]:
            readers[src] += 1
    by_name = {layer["name"]: layer for layer in layers}
    renamed, kept = {}, []
    for layer in layers:
        layer["inputs"] = [renamed.get(src, src) for src in layer["inputs"]]
        host = by_name.get(layer["inputs"][0])
        if (layer["op"] in ACTIVATION_OPS and host is not None and host["op"] in GEMM_OPS
                and "activation" not in host and readers[host["name"]] == 1 and host["name"] not in outputs
                and layer["name"] not in outputs):
            params = {k: v for k, v in layer.items() if k not in ("name", "inputs")}
            host["activation"] = params if len(params) > 1 else layer["op"]
            renamed[layer["name"]] = host["name"]
            continue
        kept.append(layer)
    return kept


# --- small helpers ------------------------------------------------------------------------------

def nice(value) -> float:
    """A float32 attribute as the short decimal a person wrote (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def compact(values) -> int | list[int]:
    """[3, 3] -> 3, as a spec would write it; [3, 5] stays a list."""
    values = [int(v) for v in values]
    return values[0] if len(set(values)) == 1 else values


def scalar(array: np.ndarray | None, default: float | None = None) -> float | None:
    if array is None or array.size == 0:
        return default
    if array.size != 1 or array.dtype == object:
        raise Unsupported(f"expected one number, got a tensor of shape {list(array.shape)}")
    return float(array.reshape(()))


def is_close(array: np.ndarray | None, target: float) -> bool:
    return array is not None and array.size == 1 and array.dtype != object and \
        math.isclose(float(array.reshape(())), target, rel_tol=1e-6)


def float_weight(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind != "f":
        raise Unsupported(f"its {what} has dtype {array.dtype}; cnngraph weights are floating point")
    return array.astype(np.float32)


def constant_value(node) -> np.ndarray:
    try:
        a = attributes(node)
    except (ValueError, TypeError) as err:  # a tensor whose data does not fit its dims
        raise Unsupported(f"its value is corrupt (truncated file?): {err}") from None
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            value = np.asarray(a[key])
            return value.astype(np.float32) if key.startswith("value_float") else value
    raise Unsupported(f"a Constant with {', '.join(a) or 'no value'} is not supported")


# --- patterns: several nodes, one layer ---------------------------------------------------------------

def match_patterns(imp: Importer) -> tuple[dict, set]:
    """{id(last node): converter} for every matched pattern, and the ids of the other members (the
    walk skips them; the converter runs when it reaches the pattern's last node)."""
    position = {id(node): i for i, node in enumerate(imp.nodes)}
    deferred, skipped = {}, set()
    for node in imp.nodes:
        matcher = MATCHERS.get(node.op_type)
        if matcher is None or id(node) in skipped or id(node) in deferred or node.domain not in ONNX_DOMAINS:
            continue
        try:
            found = matcher(imp, node)
        except (IndexError, TypeError, ValueError):  # a malformed node: not a pattern; the walk reports it
            found = None
        if found is None:
            continue
        members, convert = found
        if any(id(m) in skipped or id(m) in deferred for m in members):
            continue
        last = max(members, key=lambda m: position[id(m)])
        skipped.update(id(m) for m in members if m is not last)
        deferred[id(last)] = convert
    return deferred, skipped


def match_silu(imp: Importer, sigmoid):
    """x * sigmoid(x): PyTorch's export of SiLU (there is no ONNX op for it before opset 24)."""
    x = sigmoid.input[0]
    mul = imp.only_consumer(sigmoid.output[0], "Mul")
    if mul is None or sorted(mul.input) != sorted([x, sigmoid.output[0]]):
        return None
    return [sigmoid, mul], lambda imp, node: imp.add_layer(node, {"op": "silu"}, [imp.tensor(x)])


def _other(node, tensor: str) -> str | None:
    """The input of a two-input node that is not `tensor`."""
    ins = list(node.input)
    if len(ins) != 2 or ins.count(tensor) != 1:
        return None
    return ins[1 - ins.index(tensor)]


def match_erf_gelu(imp: Importer, erf):
    """0.5 * x * (1 + erf(x / sqrt(2))): PyTorch's export of GELU before opset 20, the factors in any order."""
    scale = imp.producer.get(erf.input[0])
    if scale is None or imp.only_consumer(scale.output[0], "Erf") is not erf or len(scale.input) != 2:
        return None
    x, c = scale.input
    if imp.is_const(x) and scale.op_type == "Mul":
        x, c = c, x
    factor = imp.consts.get(c)
    if not ((scale.op_type == "Div" and is_close(factor, math.sqrt(2)))
            or (scale.op_type == "Mul" and is_close(factor, 1 / math.sqrt(2)))):
        return None
    plus = imp.only_consumer(erf.output[0], "Add")
    if plus is None or not is_close(imp.consts.get(_other(plus, erf.output[0]) or ""), 1.0):
        return None
    members, tensor, kinds = [scale, erf, plus], plus.output[0], []

    def kind(t: str) -> str:
        if t == x:
            return "x"
        if is_close(imp.consts.get(t), 0.5):
            return "half"
        half_x = imp.producer.get(t)
        if half_x is not None and half_x.op_type == "Mul" and imp.only_consumer(t, "Mul") is not None:
            other = _other(half_x, x)
            if other is not None and is_close(imp.consts.get(other), 0.5):
                members.append(half_x)
                return "half_x"
        return "other"

    complete = (["half", "x"], ["half_x"])  # the factors multiplying (1 + erf): x and 0.5, or (0.5 * x)
    while len(kinds) < 2 and sorted(kinds) not in complete:
        mul = imp.only_consumer(tensor, "Mul")
        factor = _other(mul, tensor) if mul is not None else None
        if factor is None:
            return None
        kinds.append(kind(factor))
        members.append(mul)
        tensor = mul.output[0]
    if sorted(kinds) not in complete:
        return None
    return members, lambda imp, node: imp.add_layer(node, {"op": "gelu"}, [imp.tensor(x)])


def match_linear_bias(imp: Importer, matmul):
    """MatMul(x, W) + b: PyTorch's export of a Linear as matrix product and bias."""
    add = imp.only_consumer(matmul.output[0], "Add")
    bias_name = _other(add, matmul.output[0]) if add is not None else None
    if bias_name is None or not imp.is_const(bias_name):
        return None
    return [matmul, add], lambda imp, node: matmul_layer(imp, matmul, node, imp.consts[bias_name])


MATCHERS = {"Sigmoid": match_silu, "Erf": match_erf_gelu, "MatMul": match_linear_bias}


# --- converters: one ONNX node (or pattern) -> layer, alias or constant ---------------------------

def plain(op: str):
    """A node with one input and no attributes that matter: relu, sigmoid, global average pool, ..."""
    def convert(imp: Importer, node) -> None:
        imp.add_layer(node, {"op": op}, [imp.data(node)])
    return convert


def leaky_relu(imp, node):
    slope = nice(attributes(node).get("alpha", 0.01))
    imp.add_layer(node, {"op": "leaky_relu", "negative_slope": slope}, [imp.data(node)])


def gelu(imp, node):
    approximate = attributes(node).get("approximate", "none")
    layer = {"op": "gelu"} if approximate == "none" else {"op": "gelu", "approximate": approximate}
    imp.add_layer(node, layer, [imp.data(node)])


def clip(imp, node):
    """Clip(0, 6) is relu6 and Clip(0) is relu; the bounds are attributes before opset 11, inputs after."""
    if imp.opset < 11:
        a = attributes(node)
        low, high = a.get("min", -math.inf), a.get("max", math.inf)
    else:
        low = scalar(imp.value(node, 1, "min", optional=True), -math.inf)
        high = scalar(imp.value(node, 2, "max", optional=True), math.inf)
    ops = {(0.0, 6.0): "relu6", (0.0, math.inf): "relu"}
    if (low, high) not in ops:
        raise Unsupported(f"Clip({low:g}, {high:g}) has no cnngraph layer; Clip(0, 6) is relu6 and Clip(0) is relu")
    imp.add_layer(node, {"op": ops[low, high]}, [imp.data(node)])


def spatial_pads(a: dict, size: tuple, kernel, stride, dilation) -> list[tuple[int, int]]:
    """(begin, end) padding of H and W from `pads` or `auto_pad` (SAME_* pad so that out = ceil(in / stride))."""
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise Unsupported(f"pads {pads} must have 4 values (2-D only)")
        return list(zip(pads[:2], pads[2:]))
    if auto == "VALID":
        return [(0, 0), (0, 0)]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f'auto_pad "{auto}" is not an ONNX value')
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
        small, large = total // 2, total - total // 2
        pads.append((small, large) if auto == "SAME_UPPER" else (large, small))
    return pads


def symmetric_pad(begin: int, end: int, size: int, k: int, s: int, d: int, ceil: bool = False) -> int | None:
    """The equal padding on both sides that computes the same, or None. Extra padding at the end that
    no window reaches changes nothing (TensorFlow-style SAME at stride 2, say)."""
    if begin == end:
        return begin
    if not ceil and end > begin and conv_out_size(size, k, s, begin + end, d) == conv_out_size(size, k, s, 2 * begin, d):
        return begin
    return None


def conv(imp, node):
    a = attributes(node)
    x = imp.data(node)
    w = float_weight(imp.value(node, 1, "weight"), "weight")
    bias = imp.value(node, 2, "bias", optional=True)
    if w.ndim != 4:
        raise Unsupported(f"only 2-D convolutions are supported (a 4-D weight), got a {w.ndim}-D weight")
    k, _, kh, kw = w.shape
    if list(a.get("kernel_shape", [kh, kw])) != [kh, kw]:
        raise Unsupported(f"kernel_shape {a['kernel_shape']} disagrees with the weight's {[kh, kw]}")
    stride, dilation = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    size = imp.shapes[x][1:]
    if len(size) != 2:
        raise Unsupported(f"Conv needs an image input (N,C,H,W), got {fmt_shape(imp.shapes[x])}")
    pads = spatial_pads(a, size, (kh, kw), stride, dilation)
    padding = [symmetric_pad(b, e, n, kk, s, d) for (b, e), n, kk, s, d in zip(pads, size, (kh, kw), stride, dilation)]
    is_same = stride == [1, 1] and pads == [same_pad(kk, d) for kk, d in zip((kh, kw), dilation)]
    if is_same and (None in padding or a.get("auto_pad", "NOTSET").startswith("SAME")):
        padding = "same"
    elif None in padding:
        flat = [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
        raise Unsupported(f'pads {flat} are asymmetric; cnngraph pads both sides of an axis equally (or "same" at stride 1)')
    layer = {"op": "conv2d", "out_channels": int(k), "kernel_size": compact([kh, kw]), "stride": compact(stride),
             "padding": padding if padding == "same" else compact(padding), "dilation": compact(dilation),
             "groups": int(a.get("group", 1)), "bias": bias is not None}
    weights = {"weight": w} if bias is None else {"weight": w, "bias": float_weight(bias, "bias").reshape(-1)}
    imp.add_layer(node, layer, [x], weights)


def linear_bias(bias: np.ndarray, out_features: int) -> np.ndarray:
    """A bias that broadcasts over (N, out_features) as a (out_features,) vector."""
    bias = float_weight(bias, "bias")
    if bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1) or bias.size not in (1, out_features):
        raise Unsupported(f"its bias has shape {list(bias.shape)}; a linear layer's bias is ({out_features},)")
    return np.broadcast_to(bias.reshape(-1), (out_features,))


def gemm(imp, node):
    """alpha * x @ op(B) + beta * C, with x the data and B, C constants: a linear layer."""
    a = attributes(node)
    if a.get("transA", 0):
        raise Unsupported("transA=1 (a transposed input) is not supported")
    x = imp.data(node)
    b = float_weight(imp.value(node, 1, "B (weight)"), "weight")
    if b.ndim != 2:
        raise Unsupported(f"its weight must be a matrix, got shape {list(b.shape)}")
    weight = (b if a.get("transB", 0) else b.T) * np.float32(a.get("alpha", 1.0))
    c = imp.value(node, 2, "C (bias)", optional=True)
    weights = {"weight": weight}
    if c is not None:
        weights["bias"] = linear_bias(c, weight.shape[0]) * np.float32(a.get("beta", 1.0))
    imp.add_layer(node, {"op": "linear", "out_features": int(weight.shape[0]), "bias": c is not None}, [x], weights)


def matmul_layer(imp, matmul, last, bias: np.ndarray | None) -> None:
    x = imp.data(matmul)
    w = float_weight(imp.value(matmul, 1, "second (weight)"), "weight")
    if w.ndim != 2:
        raise Unsupported(f"only x @ W with a constant matrix W is supported, got W of shape {list(w.shape)}")
    weights = {"weight": w.T}
    if bias is not None:
        weights["bias"] = linear_bias(bias, w.shape[1])
    imp.add_layer(last, {"op": "linear", "out_features": int(w.shape[1]), "bias": bias is not None}, [x], weights)


def matmul(imp, node):
    matmul_layer(imp, node, node, None)


def batch_norm(imp, node):
    a = attributes(node)
    if a.get("training_mode", 0) or not all(imp.unused(node, i) for i in range(1, len(node.output))):
        raise Unsupported("training mode (updated running statistics) is not supported; export in eval mode")
    keys = ("weight", "bias", "running_mean", "running_var")
    weights = {key: float_weight(imp.value(node, i + 1, key), key).reshape(-1) for i, key in enumerate(keys)}
    layer = {"op": "batch_norm2d", "eps": nice(a.get("epsilon", 1e-5))}
    imp.add_layer(node, layer, [imp.data(node)], weights)


def pool(op: str):
    def convert(imp, node):
        a = attributes(node)
        x = imp.data(node)
        if len(imp.shapes[x]) != 3:
            raise Unsupported(f"{node.op_type} needs an image input (N,C,H,W), got {fmt_shape(imp.shapes[x])}")
        if not imp.unused(node, 1):
            raise Unsupported("its second output (the indices of the maxima) is not supported")
        kernel = list(a.get("kernel_shape", []))
        if len(kernel) != 2:
            raise Unsupported(f"kernel_shape {kernel} must have 2 values (2-D pooling)")
        stride, dilation = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
        if dilation != [1, 1]:
            raise Unsupported(f"dilations {dilation} are not supported (only 1)")
        ceil = bool(a.get("ceil_mode", 0))
        size = imp.shapes[x][1:]
        pads = spatial_pads(a, size, kernel, stride, dilation)
        padding = [symmetric_pad(b, e, n, k, s, 1, ceil) for (b, e), n, k, s in zip(pads, size, kernel, stride)]
        if None in padding:
            flat = [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
            raise Unsupported(f"pads {flat} are asymmetric; cnngraph pads both sides of an axis equally")
        layer = {"op": op, "kernel_size": compact(kernel), "padding": compact(padding), "ceil_mode": ceil}
        if stride != kernel:  # cnngraph's default stride is the kernel size, as in PyTorch
            layer["stride"] = compact(stride)
        if op == "avg_pool2d" and any(padding):  # without padding the divisor is the same either way
            layer["count_include_pad"] = bool(a.get("count_include_pad", 0))
        imp.add_layer(node, layer, [x])
    return convert


def flatten(imp, node):
    x = imp.data(node)
    axis = attributes(node).get("axis", 1)
    if axis % (len(imp.shapes[x]) + 1) != 1:
        raise Unsupported(f"axis {axis}: only Flatten(axis=1), keeping the batch, is supported")
    imp.add_layer(node, {"op": "flatten"}, [x])


def reshape(imp, node):
    """A reshape to (N, -1), written by PyTorch as `x.view(x.size(0), -1)`: a flatten."""
    x = imp.data(node)
    target = [t if t is BATCH else int(t) for t in imp.value(node, 1, "shape").reshape(-1)]
    features = int(np.prod(imp.shapes[x]))
    n, f = target if len(target) == 2 else (None, None)
    keeps_batch = (n is BATCH or (n == 0 and not attributes(node).get("allowzero", 0))  # 0 copies the dim
                   or (n == -1 and f == features)
                   or (isinstance(n, int) and n > 0))  # a batch size fixed at export, taken on trust
    if not (keeps_batch and f in (-1, features)):
        shown = "[" + ", ".join(str(t) for t in target) + "]"
        raise Unsupported(f"only a reshape to (N, -1), a flatten, is supported; got target shape {shown} "
                          f"for input {fmt_shape(imp.shapes[x])}")
    imp.add_layer(node, {"op": "flatten"}, [x])


def dropout(imp, node):
    """Identity at inference; the ratio is kept as the layer's p."""
    if imp.opset < 12:
        ratio = attributes(node).get("ratio", 0.5)
    else:
        ratio = scalar(imp.value(node, 1, "ratio", optional=True), 0.5)
        if scalar(imp.value(node, 2, "training_mode", optional=True), 0.0):
            raise Unsupported("training_mode=true is not supported; export in eval mode")
    if not imp.unused(node, 1):
        raise Unsupported("its second output (the mask) is not supported")
    imp.add_layer(node, {"op": "dropout", "p": nice(ratio)}, [imp.data(node)])


def identity(imp, node):
    if imp.is_const(node.input[0]):
        imp.constant(node, imp.consts[node.input[0]])
    else:
        imp.alias(node, imp.data(node))


def add(imp, node):
    """Add and Sum of tensors the network computes: residual connections. A constant operand has no layer."""
    inputs = [name for name in node.input if name]
    if any(imp.is_const(t) for t in inputs):
        raise Unsupported("adding a constant has no cnngraph layer (a bias is supported after MatMul)")
    if len(inputs) == 1:
        imp.alias(node, imp.data(node))
    else:
        imp.add_layer(node, {"op": "add"}, [imp.data(node, i) for i in range(len(inputs))])


def concat(imp, node):
    axis = attributes(node).get("axis", 1)
    if all(imp.is_const(t) for t in node.input):  # shape arithmetic
        imp.constant(node, np.concatenate([np.atleast_1d(imp.consts[t]) for t in node.input], axis=axis))
        return
    inputs = [imp.data(node, i) for i in range(len(node.input))]
    rank = len(imp.shapes[inputs[0]]) + 1
    if axis % rank != 1:
        raise Unsupported(f"axis {axis}: only concatenation along channels (axis 1) is supported")
    imp.add_layer(node, {"op": "concat"}, inputs)


def softmax(imp, node):
    x = imp.data(node)
    rank = len(imp.shapes[x]) + 1
    axis = attributes(node).get("axis", 1 if imp.opset < 13 else -1) % rank
    if imp.opset < 13 and axis != rank - 1:  # before opset 13 Softmax normalised over every axis from `axis` on
        raise Unsupported(f"before opset 13 Softmax(axis={axis}) normalises over all axes from {axis} on; "
                          f"only the last axis ({rank - 1}) is supported")
    imp.add_layer(node, {"op": "softmax", "axis": axis}, [x])


# Resize's (coordinate_transformation_mode, nearest_mode) pairs that pick input pixel floor(i / s)
# for an integer scale s, as upsample2d does: half_pixel places the sample at (i + 0.5) / s - 0.5,
# strictly within 0.5 of floor(i / s), so either rounding gives it.
NEAREST_FLOOR = {("asymmetric", "floor"), ("tf_half_pixel_for_nn", "floor"),
                 *((c, r) for c in ("half_pixel", "pytorch_half_pixel") for r in ("round_prefer_floor", "round_prefer_ceil"))}


def resize(imp, node):
    """Resize / Upsample, nearest, by an integer factor in H and W: upsample2d."""
    a = attributes(node)
    mode = a.get("mode", "nearest")
    if mode != "nearest":
        raise Unsupported(f'mode "{mode}": only "nearest" is supported')
    if node.op_type == "Resize" and imp.opset >= 11:
        modes = (a.get("coordinate_transformation_mode", "half_pixel"), a.get("nearest_mode", "round_prefer_floor"))
        if modes not in NEAREST_FLOOR:
            raise Unsupported(f"coordinate_transformation_mode {modes[0]!r} with nearest_mode {modes[1]!r} is not "
                              "supported; use asymmetric with floor, or half_pixel")
        if "axes" in a:
            raise Unsupported("the axes attribute is not supported")
    x = imp.data(node)
    if len(imp.shapes[x]) != 3:
        raise Unsupported(f"{node.op_type} needs an image input (N,C,H,W), got {fmt_shape(imp.shapes[x])}")
    if node.op_type == "Upsample" and imp.opset < 9:
        scales, sizes = np.asarray(a.get("scales", [])), None
    elif node.op_type == "Upsample" or imp.opset < 11:
        scales, sizes = imp.value(node, 1, "scales"), None
    else:
        scales, sizes = imp.value(node, 2, "scales", optional=True), imp.value(node, 3, "sizes", optional=True)
    if scales is not None and scales.size:
        factors = [float(s) for s in scales.reshape(-1)]
    elif sizes is not None and sizes.size == 4:
        factors = [1.0] + [float(s) / n for s, n in zip(sizes.reshape(-1)[1:], imp.shapes[x])]
    else:
        raise Unsupported("needs constant scales or sizes for N, C, H and W")
    if len(factors) != 4 or factors[:2] != [1, 1] or any(f < 1 or f != int(f) for f in factors[2:]):
        raise Unsupported(f"scales {[round(f, 4) for f in factors]}: only whole factors >= 1 in H and W (and 1 in N "
                          f"and C) are supported")
    imp.add_layer(node, {"op": "upsample2d", "scale_factor": compact(factors[2:])}, [x])


def pattern_only(why: str):
    def convert(imp, node):
        raise Unsupported(why)
    return convert


# --- shape arithmetic: evaluated now, with the batch size as the symbol BATCH ------------------------

def constant(imp, node):
    imp.constant(node, constant_value(node))


def shape_of(imp, node):
    if imp.is_const(node.input[0]):
        shape = np.array(imp.consts[node.input[0]].shape, dtype=np.int64)
    else:
        shape = np.array([BATCH, *imp.shapes[imp.data(node)]], dtype=object)
    a = attributes(node)
    imp.constant(node, shape[a.get("start", 0):a.get("end", len(shape))])


def gather(imp, node):
    data = imp.value(node, 0, "data")  # gathering from a tensor the network computes has no layer
    indices = imp.value(node, 1, "indices")
    taken = np.take(data, indices.astype(np.int64), axis=attributes(node).get("axis", 0))
    imp.constant(node, np.asarray(taken, dtype=data.dtype))  # a 0-d array, BATCH kept as an object


def _axes(imp, node) -> list[int]:
    if imp.opset < 13:
        return list(attributes(node).get("axes", []))
    axes = imp.value(node, 1, "axes", optional=True)
    return [] if axes is None else [int(v) for v in axes.reshape(-1)]


def unsqueeze(imp, node):
    value = imp.value(node, 0, "data")
    axes = _axes(imp, node)
    rank = value.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        value = np.expand_dims(value, axis)
    imp.constant(node, value)


def squeeze(imp, node):
    value = imp.value(node, 0, "data")
    axes = _axes(imp, node)
    imp.constant(node, np.squeeze(value, axis=tuple(a % value.ndim for a in axes)) if axes else np.squeeze(value))


def cast(imp, node):
    from onnx import helper

    if not imp.is_const(node.input[0]):
        if attributes(node).get("to") != 1:
            raise Unsupported("casting a tensor the network computes to anything but float32 is not supported")
        imp.alias(node, imp.data(node))
        return
    value = imp.consts[node.input[0]]
    if value.dtype != object:
        value = value.astype(helper.tensor_dtype_to_np_dtype(attributes(node)["to"]))
    imp.constant(node, value)


CONVERTERS = {
    "Conv": conv, "Gemm": gemm, "MatMul": matmul, "BatchNormalization": batch_norm,
    "Relu": plain("relu"), "Sigmoid": plain("sigmoid"), "Tanh": plain("tanh"),
    "HardSwish": plain("hardswish"), "LeakyRelu": leaky_relu, "Gelu": gelu, "Clip": clip,
    "MaxPool": pool("max_pool2d"), "AveragePool": pool("avg_pool2d"), "GlobalAveragePool": plain("global_avg_pool2d"),
    "Flatten": flatten, "Reshape": reshape, "Dropout": dropout, "Identity": identity, "Add": add, "Sum": add,
    "Concat": concat, "Softmax": softmax, "Resize": resize, "Upsample": resize,
    "Mul": pattern_only("Mul is supported only in x * sigmoid(x) (silu) and the erf formula of GELU"),
    "Div": pattern_only("Div is supported only in the erf formula of GELU"),
    "Erf": pattern_only("Erf is supported only in the formula of GELU: 0.5 * x * (1 + erf(x / sqrt(2)))"),
    "Constant": constant, "Shape": shape_of, "Gather": gather, "Unsqueeze": unsqueeze, "Squeeze": squeeze,
    "Cast": cast,
}
SUPPORTED_OPS = sorted(CONVERTERS)


# --- writing the imported spec ------------------------------------------------------------------------
