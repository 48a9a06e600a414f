"""`from_onnx`: an ONNX model as a cnngraph spec and its weights.

The graph is read node by node, in its (topological) order. A node becomes a layer, an alias
(Identity), or a constant: initializers, Constant nodes and every node whose inputs are all
constants (the shape arithmetic PyTorch emits for `x.view(x.size(0), -1)` and the like) are
evaluated here with NumPy (onnx_nodes.FOLDERS), before any layer converter is tried, with the batch
size kept as the symbol "N". A few multi-node patterns are matched first and become one layer each:
x*sigmoid(x) (silu), the erf formula of GELU, MatMul followed by a bias Add (linear), ...

Each node is checked against its ONNX schema (input and output counts, required attributes and
their types) before it is converted, so a converter sees a well-formed node: a converter that then
fails with anything but `Unsupported` is a bug in cnngraph (an InternalError), not the file's fault.

Shapes are inferred while the layers are made, with cnngraph's own shape rules, so a problem is
reported at the ONNX node that caused it, and are checked against the shapes the file declares.
Every node that cannot be expressed is collected, so one error lists them all, summarised by op
type. A node that reads the output of a node already reported is skipped when it has a converter
or is shape arithmetic (its failure would be noise); an op with no converter is reported even then.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from ..errors import CnnGraphError, CnnGraphWarning, InternalError, ShapeError, SpecError, quote, shorten
from ..files import given_path
from ..ops import ACTIVATION, ACTIVATIONS, GEMM, OPS, fmt_shape, ops_with
from ..ops.base import weight_key
from ..ops.onnx_mapping import BATCH, Unsupported, as_float32
from ..spec import NetworkSpec, parse_spec
from . import onnx_nodes
from .onnx_external import inline_external_data
from .onnx_nodes import (DYNAMIC_HINT, FOLDERS, NON_LAYER_CONVERTERS, SHAPE_READERS, DataShape, constant_value,
                         constants_only, fold)

ONNX_DOMAINS = ("", "ai.onnx")
MAX_PROBLEMS_SHOWN = 20  # nodes listed in the error; the rest are counted
MAX_KINDS_SHOWN = 12     # op types in the error's summary

# what to do instead, for ops no converter takes (shown after "unsupported op")
UNSUPPORTED_HINTS = {
    **dict.fromkeys(("If", "Loop", "Scan"), "control flow; export a traced model (torch.onnx.export with "
                                            "dynamo=False traces), with fixed sizes but the batch"),
    **dict.fromkeys(("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                     "ConvInteger", "MatMulInteger"), "a quantized model; export the float32 model"),
    **dict.fromkeys(("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli"),
                    "randomness; export the model in eval mode (model.eval())"),
    "ReduceMean": "a mean over H and W is a global average pool: export with nn.AdaptiveAvgPool2d(1)",
    "ATen": "a PyTorch op the exporter could not translate; it has no ONNX form",
    "NonZero": f"its output size depends on the data; {DYNAMIC_HINT}",
}


class FollowsProblem(Exception):
    """A node reads the output of a node already reported: it is skipped, not reported again."""


def unsupported(op: str) -> str:
    hint = UNSUPPORTED_HINTS.get(op)
    return f"unsupported op ({hint})" if hint else "unsupported op"


def finite(value: np.ndarray) -> bool:
    """False for a floating-point constant holding NaN or an infinity."""
    return value.dtype.kind != "f" or bool(np.isfinite(value).all())


def node_schema(node, opset: int):
    """The ONNX schema `node` follows, or None (another domain, an opset or op this onnx package does
    not know, a deprecated op)."""
    from onnx import defs

    if node.domain not in ONNX_DOMAINS:
        return None
    try:
        schema = defs.get_schema(node.op_type, opset, "")
    except defs.SchemaError:
        return None
    return None if schema.deprecated else schema


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

    path = given_path(path, "an ONNX model must be a file path", SpecError)
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SpecError(f"cannot read the ONNX model: {err.strerror or err}", file=file) from None
    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise SpecError(f"not a valid ONNX model (truncated or corrupt file?): {err}", file=file) from None
    if not model.HasField("graph") or not model.graph.output:
        raise SpecError("not a valid ONNX model (truncated or corrupt file?): it holds no graph with outputs",
                        file=file)
    inline_external_data(model, file)  # not onnx's loader: it reads some locations from the working directory
    return model


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
        from onnx import IR_VERSION

        self.ir_version = min(model.ir_version, IR_VERSION) if model.ir_version > 0 else IR_VERSION  # for the checker
        self.consts: dict[str, np.ndarray] = {}      # tensor -> value known now (initializers, shape arithmetic)
        self.source: dict[str, str] = {}             # tensor -> the layer or network input computing it
        self.shapes: dict[str, tuple] = {}           # tensor -> per-sample shape
        self.poisoned: set[str] = set()              # outputs of nodes that could not be converted
        self.poisoned_shapes: set[str] = set()       # those of them that would have been constants
        self.channels_last: set[str] = set()         # tensors that are (N, H, W, C) views of images (is_channels_last)
        self.parameters = {i.name for i in self.graph.initializer if i.name and not set(i.name) & set("/: ")}
        self.layers: list[dict] = []
        self.weights: dict[str, np.ndarray] = {}
        self.problems: list[tuple[str, str]] = []    # (op type, or "graph output"; the message)
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
        file_elements = sum(v.size for v in self.consts.values())
        self.fold_budget = max(onnx_nodes.MIN_FOLD_BUDGET, 4 * file_elements)  # elements folding may make in all
        self.folded = 0

    def _read_initializers(self) -> None:
        from onnx import numpy_helper

        for init in self.graph.initializer:
            if init.name in self.consts:  # which one a runtime would take is anyone's guess
                raise SpecError(f"initializer {quote(init.name)} is given twice; each initializer needs a "
                                f"name of its own (corrupt file?)", file=self.file)
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
            self._visit(node, deferred.get(id(node)), id(node) in skipped)
        outputs = self._network_outputs()
        if self.problems:
            raise SpecError(self._problems_message(), file=self.file)
        self._note_non_finite_weights()
        layers = fuse_activations(self.layers, outputs)
        name = self.graph.name if self.graph.name not in ("", "main_graph") else Path(self.file).stem  # torch names every graph main_graph
        spec = {"format_version": 1, "name": clean_name(name) or "network", "inputs": inputs, "layers": layers,
                "outputs": outputs}
        try:
            return parse_spec(spec), self.weights
        except CnnGraphError as err:  # every layer was validated on the way: this would be a bug here
            raise SpecError(f"the imported network is not a valid spec: {err}", file=self.file) from None

    def _note_non_finite_weights(self) -> None:
        """NaN or infinite weights are imported as the file has them, with a note: compile refuses them."""
        bad = {key: int(np.count_nonzero(~np.isfinite(v))) for key, v in self.weights.items() if not np.isfinite(v).all()}
        if bad:
            first, count = next(iter(bad.items()))
            others = f" and {len(bad) - 1} more weight tensor(s)" if len(bad) > 1 else ""
            warnings.warn(f"{self.file}: weight {quote(first)} holds {count} NaN or infinite value(s){others}; imported "
                          f"as the file has them, but compile refuses non-finite weights", CnnGraphWarning, stacklevel=4)

    def _visit(self, node, pattern, skipped: bool) -> None:
        """Fold, convert or report one node. `pattern`: the converter of the pattern `node` ends;
        `skipped`: `node` is another member of one (only checked here)."""
        standard = node.domain in ONNX_DOMAINS
        op = node.op_type if standard else f"{node.domain}.{node.op_type}"
        if skipped:
            self._attempt(node, lambda: self._validate(node))
            return
        convert = pattern or (CONVERTERS.get(node.op_type) if standard else None)
        folder = FOLDERS.get(node.op_type) if standard and pattern is None else None
        if convert is None and folder is None:
            self._problem(node, unsupported(op), op)
            return
        foldable = folder is not None and self._foldable(node)
        if any(t in self.poisoned for t in node.input):
            # its own failure would be noise, unless nothing could convert it anyway
            if foldable or (convert is not None and not hasattr(convert, "pattern_only")):
                self._poison(node, foldable)
            else:
                self._problem(node, getattr(convert, "pattern_only", None) or constants_only(node))
            return
        if foldable:
            self._attempt(node, lambda: self._fold(node), shape=True)
        elif convert is not None:
            self._attempt(node, lambda: (self._validate(node), convert(self, node)))
        else:
            self._attempt(node, lambda: (self._validate(node), self._computed_inputs(node)), why=constants_only(node))

    def _attempt(self, node, step, shape: bool = False, why: str | None = None) -> None:
        """Run `step` for `node`, recording Unsupported (or `why`, when it returns) as a problem; a
        converter that fails otherwise on a node that passed `_validate` is a bug here."""
        try:
            step()
            if why is not None:
                raise Unsupported(why)
        except Unsupported as reason:
            self._problem(node, str(reason), shape=shape)
        except FollowsProblem:
            self._poison(node, shape)
        except CnnGraphError:
            raise
        except Exception as err:  # noqa: BLE001 - any other exception is a converter's bug, not bad input
            bad = next((t for t in node.input if t in self.consts and not finite(self.consts[t])), None)
            if bad is not None and isinstance(err, (ValueError, OverflowError, FloatingPointError)):
                self._problem(node, f"its constant input {quote(bad)} holds NaN or infinite values (corrupt file?)",
                              shape=shape)
                return
            raise InternalError(f"{self.file}: ONNX node {node_label(node)} ({node.op_type}): importing it failed "
                                f"with {type(err).__name__}: {shorten(str(err), 300)}; the node is well formed, so "
                                "this is a bug in cnngraph: please report it") from err

    def _foldable(self, node) -> bool:
        """Whether `node` is shape arithmetic: each input a constant (or one that a reported node would
        have made), or the shape of a tensor for Shape and Size."""
        if node.op_type in SHAPE_READERS:
            return bool(node.input) and bool(node.input[0])
        return all(not t or t in self.consts or t in self.poisoned_shapes for t in node.input)

    def _fold(self, node) -> None:
        self._validate(node)
        xs = []
        for t in node.input:
            if not t:
                xs.append(None)
            elif t in self.consts:
                xs.append(self.consts[t])
            else:  # Shape or Size of a tensor the network computes
                shape = self.shapes[self.tensor(t)]
                xs.append(DataShape((BATCH, *shape[1:], shape[0]) if self.is_channels_last(t) else (BATCH, *shape)))
        values = fold(node, self.opset, xs)
        made = sum(v.size for v in values if not any(isinstance(x, np.ndarray) and np.may_share_memory(v, x)
                                                     for x in xs))
        if node.op_type != "Constant" and made:  # a Constant's value is the file's own
            if self.folded + made > self.fold_budget:
                raise Unsupported(f"the constants evaluated at import would hold more than {self.fold_budget:,} "
                                  "elements in all (corrupt or hostile file?)")
            self.folded += made
        for name, value in zip(node.output, values):
            if name:
                self.consts[name] = value

    def _computed_inputs(self, node) -> None:
        """Each input that is no constant, checked to be defined (a corrupt file otherwise)."""
        for t in node.input:
            if t and t not in self.consts:
                self._defined(t)

    def _validate(self, node) -> None:
        """`node` checked against its ONNX schema: input and output counts, required attributes and the
        types of all of them. Unsupported (naming the problem) when it fails. A node of an opset this
        onnx package does not know, or of a deprecated op (Upsample), is taken as it is."""
        if not node.output:
            raise Unsupported("has no output (corrupt file?)")
        schema = node_schema(node, self.opset)
        if schema is None:
            return
        if not node.input and schema.min_input > 0:
            raise Unsupported("lacks a data input (corrupt file?)")
        from onnx import checker

        context = checker.C.CheckerContext()
        context.ir_version, context.opset_imports = self.ir_version, dict.fromkeys(ONNX_DOMAINS, self.opset)
        try:
            checker.C.check_node(node.SerializeToString(), context, checker.C.LexicalScopeContext())
        except Exception as err:  # noqa: BLE001 - ValidationError, or whatever else the checker makes of the node
            lines = str(err).strip().splitlines() or [type(err).__name__]
            message = re.sub(r"Node ?(\(.*?\))?( with schema\(.*?\))?", "the node", lines[0])  # named already
            if node.name:
                message = message.replace(f"'{node.name} : ", "'")
            raise Unsupported(f"malformed node (corrupt file?): {shorten(message, 300)}") from None

    def _problem(self, node, why: str, op: str | None = None, shape: bool = False) -> None:
        self.problems.append((op or node.op_type, f"{node_label(node)} ({op or node.op_type}): {why}"))
        self._poison(node, shape)

    def _poison(self, node, shape: bool) -> None:
        self.poisoned.update(t for t in node.output if t)
        if shape:
            self.poisoned_shapes.update(t for t in node.output if t)

    def _problems_message(self) -> str:
        kinds = Counter(kind for kind, _ in self.problems).most_common()
        summary = ", ".join(f"{kind} x{count}" for kind, count in kinds[:MAX_KINDS_SHOWN])
        if len(kinds) > MAX_KINDS_SHOWN:
            summary += f", {len(kinds) - MAX_KINDS_SHOWN} more op types"
        shown = [text for _, text in self.problems[:MAX_PROBLEMS_SHOWN]]
        more = len(self.problems) - len(shown)
        return (f"{len(self.problems)} ONNX node(s) cannot be expressed in cnngraph ({summary}): {'; '.join(shown)}"
                + (f"; and {more} more" if more else "") + f" (supported ops: {', '.join(SUPPORTED_OPS)})")

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
                hint = (f"; {DYNAMIC_HINT} (export with dynamic_axes naming axis 0 only)"
                        if dims is not None and len(dims) in (2, 4) else "")
                raise SpecError(f"{where} must have a known shape (N, C, H, W) or (N, F), got {shown}{hint}",
                                file=self.file)
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
                self.problems.append(("graph output", f"output {quote(name)}: not computed by a layer (a constant or "
                                                      "a network input)"))
            elif layer in outputs:
                self.problems.append(("graph output", f"output {quote(name)}: the same tensor as output "
                                                      f"{quote(outputs[layer])}"))
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

    def numbers(self, node, index: int, what: str, optional: bool = False) -> np.ndarray | None:
        """Input `index` of `node` as a constant of numbers (int, float or bool), without the batch
        symbol N: for axes, starts, sizes, scales. Unsupported (saying N is only known at compile time)
        when shape arithmetic put N in it; None when absent and optional."""
        value = self.value(node, index, what, optional)
        return None if value is None else onnx_nodes.numeric(None, value, what)

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

    def add_layer(self, node, layer: dict, inputs: list[str], weights: dict | None = None,
                  channels_last: bool = False) -> None:
        """A layer computing `node`'s first output from the tensors `inputs`; checked and shaped now.
        `channels_last`: the converter read its input as the channels-last view it is and made the
        layer that computes the same per pixel; the output is such a view too."""
        view = self._keeps_view(layer["op"], inputs, channels_last)
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
        weights = {suffix: np.ascontiguousarray(as_float32(array, suffix)) for suffix, array in weights.items()}
        out = node.output[0]
        self._check_declared(node, out, shape, view)
        self.taken.add(name)
        self.source[out], self.shapes[out] = name, shape
        if view:
            self.channels_last.add(out)
        self.layers.append(layer)
        for suffix, array in weights.items():
            self.weights[weight_key(name, suffix)] = array

    def alias(self, node, tensor: str, channels_last: bool | None = None) -> None:
        """`node`'s output is `tensor` under another name (Identity), or, with `channels_last`, its
        channels-last view (Transpose(0, 2, 3, 1)) or back (False)."""
        out = node.output[0]
        view = self.is_channels_last(tensor) if channels_last is None else channels_last
        self._check_declared(node, out, self.shapes[tensor], view)
        self.source[out], self.shapes[out] = self.source[tensor], self.shapes[tensor]
        if view:
            self.channels_last.add(out)

    def is_parameter(self, tensor: str) -> bool:
        """Whether `tensor` is an initializer named as a module parameter ("features.1.0.layer_scale"),
        not a constant PyTorch named after a node ("onnx::Mul_12", "/Constant_output_0")."""
        return tensor in self.parameters

    def is_channels_last(self, tensor: str) -> bool:
        """Whether `tensor` is the (N, H, W, C) transpose of an image the network computes; its layer
        and `shapes` entry are the image's own, (C, H, W)."""
        return tensor in self.channels_last

    def _keeps_view(self, op: str, inputs: list[str], converted: bool) -> bool:
        """Whether a layer of `op` reading `inputs` computes a channels-last view. A layer may read a
        view if its converter said it handled one, or if it computes the same in any layout: an
        activation, a dropout, or arithmetic of equal-shaped views."""
        views = [self.is_channels_last(t) for t in inputs]
        if converted or not any(views):
            return converted
        elementwise = op in ops_with(ACTIVATION) or op == "dropout" or (
            op in ("add", "mul", "sub", "div") and all(views) and len({self.shapes[t] for t in inputs}) == 1)
        if not elementwise:
            raise Unsupported(f"it reads the channels-last view of an image (a Transpose(0, 2, 3, 1)); on such a "
                              "view only elementwise ops, LayerNormalization over the last axis, MatMul by a "
                              f"constant and Mul by a constant are supported, not {op}")
        return True
    def constant(self, node, value: np.ndarray) -> None:
        self.consts[node.output[0]] = value

    def _unique(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        return name

    def _check_declared(self, node, tensor: str, shape: tuple, channels_last: bool = False) -> None:
        dims = self.declared.get(tensor)
        if dims is None:
            return
        if channels_last:
            shape = (*shape[1:], shape[0])
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
        if (layer["op"] in ops_with(ACTIVATION) and host is not None and host["op"] in ops_with(GEMM)
                and "activation" not in host and readers[host["name"]] == 1 and host["name"] not in outputs
                and layer["name"] not in outputs):
            params = {k: v for k, v in layer.items() if k not in ("name", "inputs")}
            host["activation"] = params if len(params) > 1 else layer["op"]
            renamed[layer["name"]] = host["name"]
            continue
        kept.append(layer)
    return kept


# --- patterns: several nodes, one layer ---------------------------------------------------------------

def match_patterns(imp: Importer) -> tuple[dict, set]:
    """{id(last node): converter} for every matched pattern, and the ids of the other members (the
    walk skips them; the converter runs when it reaches the pattern's last node)."""
    position = {id(node): i for i, node in enumerate(imp.nodes)}
    deferred, skipped = {}, set()
    for node in imp.nodes:
        if id(node) in skipped or id(node) in deferred or node.domain not in ONNX_DOMAINS:
            continue
        found = next(filter(None, (_try(match, imp, node) for match in MATCHERS.get(node.op_type, []))), None)
        if found is None:
            continue
        members, convert = found
        if any(id(m) in skipped or id(m) in deferred for m in members):
            continue
        last = max(members, key=lambda m: position[id(m)])
        skipped.update(id(m) for m in members if m is not last)
        deferred[id(last)] = convert
    return deferred, skipped



def _try(match, imp, node):
    try:
        return match(imp, node)
    except (IndexError, TypeError, ValueError):  # a malformed node: not a pattern; the walk reports it
        return None


# --- the converters: each op's own (ops/), then what is no layer (onnx_nodes.py) ---------------------

def _registry() -> tuple[dict, dict]:
    """ONNX op type -> converter, and op type -> pattern matchers, from every registered op."""
    converters, matchers, owners = dict(NON_LAYER_CONVERTERS), {}, {}
    for cls in [*OPS.values(), *ACTIVATIONS.values()]:
        for op_type, convert in cls.onnx_converters.items():
            if owners.setdefault(op_type, cls) is not cls and converters[op_type] is not convert:
                raise TypeError(f"two ops convert ONNX {op_type}: {owners[op_type].__name__} and {cls.__name__}")
            converters[op_type] = convert
        for op_type, match in cls.onnx_patterns.items():
            matchers.setdefault(op_type, []).append(match)
    return converters, matchers


CONVERTERS, MATCHERS = _registry()
SUPPORTED_OPS = sorted(CONVERTERS)
