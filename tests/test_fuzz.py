"""Spec fuzzing (Hypothesis): every example spec, mutated 1-3 times, and raw garbage instead of JSON.

Whatever the input, cnngraph either compiles it or raises a `CnnGraphError` subclass whose one-line
message says where the problem is (the file, and a layer, a field or a JSON path; a whole-document
problem such as bad JSON names the file, line and column). Any other exception is a bug, and so is
a case that takes seconds: huge shapes must be refused before anything is allocated.

Each case is a JSON file loaded with `load_spec` and built (batch 1); specs that build are compiled
for the CPU and run once when small enough to be quick. Some cases go through the Python API as a
dict instead of a file, so NaN and deeply nested values reach the models rather than the JSON parser.
A second test sends cases through the command line (`validate`, and `run` for small networks).

Cases per run: `--fuzz-examples N` (or CNNGRAPH_FUZZ_EXAMPLES), default a few hundred, derandomized
so CI sees the same cases every time; CNNGRAPH_FUZZ_SEED=S makes a fresh random run from seed S.
Bugs the fuzzer found are pinned as explicit regression cases at the bottom.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
import time
import tracemalloc
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import cnngraph
from cnngraph.cli import main
from cnngraph.graph import in_shapes, layer_nodes
from cnngraph.ops import ACTIVATIONS, OPS

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = {path.stem: json.loads(path.read_text()) for path in sorted(EXAMPLES_DIR.glob("*.json"))}

DEFAULT_EXAMPLES = 500  # the main test; the CLI test runs a fifth as many (about 15 s together on 2 cores)
MAX_VALIDATE_SECONDS = 2.0  # load + build; generous for a shared 2-core machine (typically a few ms)
MAX_CASE_SECONDS = 60.0  # the whole case, compile and run included: catches a hang, not slowness (an example
                         # network's case takes 3-5 s, 14 s on a 2-core machine running other tests)
MAX_BUILD_MEMORY = 50 * 2**20  # bytes traced while loading and building: shapes are arithmetic only
MAX_MESSAGE = 1000  # characters in one error line
# compile and run only networks this cheap (ResNet-18 at 224x224: 3.6e9 FLOPs, 11.7e6 weights)
RUN_FLOPS_LIMIT = 1e9
RUN_WEIGHTS_LIMIT = 4e6  # weights are initialised at compile time: 11.7e6 take half a second

# what a message may say instead of naming a layer, field or path: the document as a whole is bad
DOCUMENT_PROBLEMS = ("invalid JSON", "must be a JSON object", "cannot read")


# --- the options -----------------------------------------------------------------------------------

def n_examples(request, default: int) -> int:
    value = request.config.getoption("--fuzz-examples", default=None)
    value = value if value is not None else os.environ.get("CNNGRAPH_FUZZ_EXAMPLES")
    return default if value is None else max(1, int(value) * default // DEFAULT_EXAMPLES)


SLOW_OR_LARGE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                 HealthCheck.large_base_example]


def fuzz(request, default: int):
    """The decorators of a fuzz property: derandomized, unless CNNGRAPH_FUZZ_SEED asks for a fresh run."""
    fresh_seed = os.environ.get("CNNGRAPH_FUZZ_SEED")
    configure = settings(derandomize=fresh_seed is None, deadline=None, database=None, print_blob=False,
                         max_examples=n_examples(request, default), suppress_health_check=SLOW_OR_LARGE)

    def decorate(test):
        test = configure(test)
        return seed(int(fresh_seed))(test) if fresh_seed is not None else test
    return decorate


# --- garbage ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Deep:
    """A value nested `depth` levels deep. Its JSON text is written directly, since json.dumps
    (and json.loads) would hit Python's recursion limit long before 100000 levels."""
    depth: int
    kind: str  # "list" or "dict"

    def text(self) -> str:
        if self.kind == "list":
            return "[" * self.depth + "]" * self.depth
        return '{"a": ' * self.depth + "null" + "}" * self.depth

    def value(self):
        value = [] if self.kind == "list" else None
        for _ in range(self.depth - (self.kind == "list")):
            value = [value] if self.kind == "list" else {"a": value}
        return value


LONG_NAME = "n" * 100_000
STRANGE_NAMES = ["", " ", "x" * 257, LONG_NAME, "é層🙂" * 50, "a\nb", "tab\there", "\x00", "\x1b[31mred\x1b[0m",
                 "line\u2028sep", "\ud800", "conv2d_0", "image", "../../etc/passwd", '"quoted"', "{braces}"]
HUGE_INTS = [2**31, 2**63, 2**64, 10**12, 10**30, 10**400]
GARBAGE = [*HUGE_INTS, -1, 0, 1, 2, -(2**63), 1.5, 0.0, -0.5, 1e308, 5e-324, math.nan, math.inf, -math.inf,
           True, False, None, [], {}, [1, 2, 3], [3, 3], [0, 0], [-1, 1], {"op": "relu"}, "relu", "same",
           *STRANGE_NAMES, Deep(5000, "list"), Deep(1000, "dict"), Deep(20, "list"), Deep(5, "dict")]
garbage = st.sampled_from(GARBAGE) | st.integers() | st.floats() | st.text(max_size=20)

# values a field could plausibly hold: these get past the type checks into the shape rules
PLAUSIBLE = [1, 2, 3, 5, 7, 0, -1, 2**31, 10**12, [1, 2], [2, 1], [3, 3], [1, 1], [2, 2], [0, 1], "same", "valid",
             0.5, 1e-5, 0.0, 0.999999, 2.0, -3, True, False, None, "relu", {"op": "leaky_relu", "negative_slope": 0.2},
             "gelu", {"op": "gelu", "approximate": "tanh"}]
KNOWN_FIELDS = sorted({f for model in OPS.values() for f in model.model_fields} - {"op", "name", "inputs"})


def retyped(value):
    """The same value as every other JSON type: 3 -> "3", 3.0, [3], {"value": 3}, true, null."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else 1
    as_float = float(number) if isinstance(number, float) or abs(number) < 2**1000 else math.inf
    as_int = number if isinstance(number, int) else int(number) if math.isfinite(number) else 0
    forms = [str(value)[:50], as_float, as_int, [value], {"value": value}, True, None]
    return [f for f in forms if type(f) is not type(value)]


# --- picking places in a spec ----------------------------------------------------------------------

def slots(data, limit_depth: int = 6) -> list[tuple]:
    """Every (container, key) under `data`: a dict key or a list index, at any depth."""
    found, stack = [], [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= limit_depth:
            continue
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for key in keys:
            found.append((node, key))
            stack.append((node[key], depth + 1))
    return found


def layers_of(spec: dict) -> list:
    layers = spec.get("layers")
    return layers if isinstance(layers, list) else []


def layer_dicts(spec: dict) -> list[dict]:
    return [layer for layer in layers_of(spec) if isinstance(layer, dict)]


def names_in(spec: dict) -> list[str]:
    """Layer and network-input names, as references may use them."""
    inputs = spec.get("inputs") if isinstance(spec.get("inputs"), list) else []
    found = [i.get("name") for i in inputs if isinstance(i, dict)] + [l.get("name") for l in layer_dicts(spec)]
    return [n for n in found if isinstance(n, str)] or ["image"]


def pick(draw, options: list):
    return draw(st.sampled_from(options)) if options else None


# --- mutations: each changes `spec` in place -----------------------------------------------------

def delete_field(draw, spec):
    node, key = pick(draw, slots(spec)) or (spec, "layers")
    del node[key]


def retype_value(draw, spec):
    node, key = pick(draw, slots(spec)) or (spec, "layers")
    node[key] = pick(draw, retyped(node[key]))


def garbage_value(draw, spec):
    node, key = pick(draw, slots(spec)) or (spec, "layers")
    node[key] = draw(garbage)


def plausible_layer_field(draw, spec):
    """A known field, on any layer (its own op's or another's), set to a value of a plausible type."""
    layer = pick(draw, layer_dicts(spec))
    if layer is not None:
        layer[draw(st.sampled_from(KNOWN_FIELDS))] = draw(st.sampled_from(PLAUSIBLE) | st.integers(-2, 40))


def unknown_field(draw, spec):
    """A field no model has (a typo, an odd key) on a layer, an activation, an input or the top level."""
    targets = [spec, *layer_dicts(spec), *[l["activation"] for l in layer_dicts(spec)
                                           if isinstance(l.get("activation"), dict)]]
    target = pick(draw, targets)
    key = draw(st.sampled_from(["kernal_size", "output", "out_chanels", "kernel size", "", "1", "$ref", "op ",
                                "é", "a\nb", LONG_NAME]))
    target[key] = draw(garbage)


def duplicate_layer(draw, spec):
    layers = layers_of(spec)
    if layers:
        copied = copy.deepcopy(layers[draw(st.integers(0, len(layers) - 1))])
        if isinstance(copied, dict) and draw(st.booleans()):
            copied["name"] = f"{copied.get('name')}_copy"  # a copy under a new name: wiring changes, not names
        layers.insert(draw(st.integers(0, len(layers))), copied)


def delete_layer(draw, spec):
    layers = layers_of(spec)
    if layers:
        del layers[draw(st.integers(0, len(layers) - 1))]


def reorder_layers(draw, spec):
    layers = layers_of(spec)
    if len(layers) > 1 and draw(st.booleans()):
        i, j = draw(st.integers(0, len(layers) - 1)), draw(st.integers(0, len(layers) - 1))
        layers[i], layers[j] = layers[j], layers[i]
    elif layers:
        spec["layers"] = draw(st.permutations(layers))


def rewire_inputs(draw, spec):
    """A layer reads other tensors: earlier or later layers (cycles), network inputs, unknown names,
    the same name twice, or nothing at all."""
    layer = pick(draw, layer_dicts(spec))
    if layer is None:
        return
    names = names_in(spec)
    one = st.sampled_from(names) | st.sampled_from(["nonexistent", layer.get("name") or "self", *STRANGE_NAMES[:4]])
    layer["inputs"] = draw(st.lists(one, min_size=0, max_size=4))


def rename_layer(draw, spec):
    """A layer renamed: to another layer's or an input's name (duplicates), or to a strange name."""
    layer = pick(draw, layer_dicts(spec))
    if layer is not None:
        layer["name"] = draw(st.sampled_from(names_in(spec)) | st.sampled_from(STRANGE_NAMES))


def change_op(draw, spec):
    layer = pick(draw, layer_dicts(spec))
    if layer is not None:
        layer["op"] = draw(st.sampled_from(list(OPS)) | st.sampled_from(["conv3d", "Conv2d", "", LONG_NAME]) | garbage)


def change_activation(draw, spec):
    layer = pick(draw, layer_dicts(spec))
    if layer is not None:
        layer["activation"] = draw(st.sampled_from(list(ACTIVATIONS)) | st.sampled_from(
            [{"op": "leaky_relu", "negative_slope": math.nan}, {"op": "leaky_relu", "negative_slope": 1e308},
             {"op": "gelu", "approximate": "fast"}, {"op": "conv2d"}, {}, {"op": None}, "relu7"]) | garbage)


def network_input_shape(draw, spec):
    """The network input's shape: huge ([3, 10**6, 10**6]), zero, negative, another rank."""
    inputs = spec.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        inputs[0]["shape"] = draw(st.sampled_from(
            [[3, 10**6, 10**6], [10**12], [2**63, 1, 1], [3, 0, 32], [-3, 32, 32], [3, 32], [], [3, 32, 32, 1],
             [3, 1, 1], [1, 1, 1], [5], [3, 7, 7], [3, 2**31, 1], [3.0, 32, 32], [3, 4000, 4000]])
            | st.lists(st.integers(-2, 300), min_size=0, max_size=4))


def network_inputs(draw, spec):
    """Another network input, an input renamed or removed, or the list made empty."""
    inputs = spec.get("inputs")
    if not isinstance(inputs, list):
        return
    choice = draw(st.integers(0, 3))
    if choice == 0:
        inputs.append({"name": draw(st.sampled_from(["extra", *names_in(spec)])),
                       "shape": draw(st.sampled_from([[3, 32, 32], [10], [1, 224, 224]]))})
    elif choice == 1 and inputs and isinstance(inputs[0], dict):
        inputs[0]["name"] = draw(st.sampled_from(STRANGE_NAMES + names_in(spec)))
    elif choice == 2 and inputs:
        del inputs[0]
    else:
        spec["inputs"] = []


def network_outputs(draw, spec):
    names = names_in(spec)
    spec["outputs"] = draw(st.lists(st.sampled_from(names) | st.sampled_from(["nonexistent", *STRANGE_NAMES[:6]]),
                                    min_size=0, max_size=4) | garbage)


def extra_outputs(draw, spec):
    """Several outputs, taken from the middle of the network: the blocks around them cannot fuse away."""
    names = [l.get("name") for l in layer_dicts(spec) if isinstance(l.get("name"), str)]
    if names:
        spec["outputs"] = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))


NEW_LAYERS = [
    {"op": "relu"}, {"op": "batch_norm2d"}, {"op": "dropout", "p": 0.1}, {"op": "max_pool2d", "kernel_size": 2},
    {"op": "avg_pool2d", "kernel_size": 3, "stride": 1, "padding": 1, "ceil_mode": True},
    {"op": "conv2d", "out_channels": 4, "kernel_size": 1},
    {"op": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": "same", "groups": 2, "activation": "relu6"},
    {"op": "add"}, {"op": "concat"}, {"op": "softmax"}, {"op": "flatten"}, {"op": "global_avg_pool2d"},
    {"op": "upsample2d", "scale_factor": 2}, {"op": "linear", "out_features": 10, "activation": "gelu"},
]


def insert_layer(draw, spec):
    """A plausible new layer anywhere, reading the previous layer (the default) or one or two earlier
    tensors: a detour, a dead branch or an extra residual, which the passes have to handle."""
    layers = layers_of(spec)
    position = draw(st.integers(0, len(layers)))
    layer = {**draw(st.sampled_from(NEW_LAYERS)), "name": f"inserted_{position}"}
    operands = 2 if layer["op"] in ("add", "concat") else 1
    if operands == 2 or draw(st.booleans()):
        earlier = names_in({"inputs": spec.get("inputs"), "layers": layers[:position]})
        layer["inputs"] = draw(st.lists(st.sampled_from(earlier), min_size=operands, max_size=operands + 1))
    layers.insert(position, layer)


MUTATIONS = [delete_field, retype_value, garbage_value, plausible_layer_field, unknown_field, duplicate_layer,
             delete_layer, reorder_layers, rewire_inputs, rename_layer, change_op, change_activation,
             network_input_shape, network_inputs, network_outputs, extra_outputs,
             insert_layer, insert_layer]  # twice: most mutations end in an error, this one often compiles


# --- cases -----------------------------------------------------------------------------------------

@dataclass
class FuzzCase:
    """One input: a spec (`data`, written as JSON, or passed as a dict) or raw `text` / `raw` bytes."""
    label: str
    data: object = None
    text: str | None = None
    raw: bytes | None = None
    as_dict: bool = False  # through parse_spec as Python data, not a file
    example: str | None = None  # the example spec it was mutated from

    def __repr__(self) -> str:
        """The label and what changed (a failing case printed whole would be thousands of lines)."""
        how = " (as a dict)" if self.as_dict else ""
        if self.example is None:
            return f"<{self.label}{how}: {_clip(repr(self.raw if self.raw is not None else self.text), 300)}>"
        before, after = (_lines(d) for d in (EXAMPLES[self.example], self.data))
        diff = difflib.unified_diff(before, after, self.example, "mutated", n=0, lineterm="")
        return f"<{self.label}{how}:\n" + "\n".join(_clip(line, 300) for line in diff) + ">"

    def _repr_pretty_(self, printer, cycle):  # Hypothesis prints dataclasses field by field otherwise
        printer.text(repr(self))

    def file_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.text is not None:
            return self.text.encode("utf-8", "surrogatepass")
        return to_json(self.data).encode("utf-8")


def _lines(data) -> list[str]:
    return to_json(data, indent=1).splitlines()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def to_json(data, indent: int | None = None) -> str:
    """JSON text of `data`, Deep values written in directly; NaN and Infinity as Python writes them."""
    deep: dict[str, Deep] = {}

    def placeholder(value):
        if isinstance(value, Deep):
            deep[f"@@deep{len(deep)}@@"] = value
            return f"@@deep{len(deep) - 1}@@"
        raise TypeError(type(value))

    text = json.dumps(data, default=placeholder, indent=indent)
    for key, value in deep.items():
        text = text.replace(f'"{key}"', value.text())
    return text


def materialize(data):
    """`data` as Python objects, Deep values built for real."""
    if isinstance(data, Deep):
        return data.value()
    if isinstance(data, dict):
        return {k: materialize(v) for k, v in data.items()}
    if isinstance(data, list):
        return [materialize(v) for v in data]
    return data


@st.composite
def mutated_specs(draw):
    name = draw(st.sampled_from(sorted(EXAMPLES)))
    spec = copy.deepcopy(EXAMPLES[name])
    applied = []
    if draw(st.booleans()):  # small images: most mutated networks then compile and run quickly
        size = draw(st.sampled_from([8, 16, 24, 32, 40, 64]))
        spec["inputs"][0]["shape"][1:] = [size, size]
        applied.append(f"{size}x{size} input")
    for _ in range(draw(st.integers(1, 3))):
        mutation = draw(st.sampled_from(MUTATIONS))
        mutation(draw, spec)
        applied.append(mutation.__name__)
    return FuzzCase(f"{name}: {', '.join(applied)}", data=spec, as_dict=draw(st.integers(0, 4)) == 0, example=name)


def truncated_json(draw) -> FuzzCase:
    text = to_json(EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))])
    return FuzzCase("truncated JSON", text=text[:draw(st.integers(0, len(text) - 1))])


def non_finite_literal(draw) -> FuzzCase:
    """A NaN or Infinity literal in place of a number (Python's json writes and reads them)."""
    text = to_json(EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))])
    literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
    field = draw(st.sampled_from(["kernel_size", "out_channels", "format_version", "shape"]))
    return FuzzCase(f"{literal} literal", text=re.sub(rf'("{field}": \[?)\d+', rf"\g<1>{literal}", text, count=1))


def deep_json(draw) -> FuzzCase:
    depth = draw(st.sampled_from([100_000, 10_000, 990]))
    where = draw(st.sampled_from(["top", "layers", "field"]))
    deep = Deep(depth, draw(st.sampled_from(["list", "dict"]))).text()
    if where == "top":
        return FuzzCase(f"JSON {depth} deep", text=deep)
    if where == "layers":
        return FuzzCase(f"layers {depth} deep", text='{"format_version": 1, "inputs": [{"name": "x", "shape": [3]}], '
                                                     f'"layers": {deep}}}')
    return FuzzCase(f"field {depth} deep", text='{"format_version": 1, "inputs": [{"name": "x", "shape": [3]}], '
                                                f'"layers": [{{"op": "linear", "out_features": {deep}}}]}}')


def odd_document(draw) -> FuzzCase:
    """Valid JSON that is not an object, text that is not UTF-8, a BOM, a 5000-digit number."""
    text = to_json(EXAMPLES["lenet5"])
    return draw(st.sampled_from([
        FuzzCase("array", text="[" + text + "]"), FuzzCase("string", text='"spec"'), FuzzCase("null", text="null"),
        FuzzCase("empty", text=""), FuzzCase("BOM", text="\ufeff" + text),
        FuzzCase("latin-1", raw='{"é": 1}'.encode("latin-1")),
        FuzzCase("UTF-16", raw=text.encode("utf-16")), FuzzCase("lone surrogate", text='{"name": "\\ud800"}'),
        FuzzCase("5000 digits", text=text.replace('"out_channels": 6', '"out_channels": ' + "9" * 5000)),
        FuzzCase("two documents", text=text + text), FuzzCase("trailing comma", text=text[:-2] + ",}"),
    ]))


@st.composite
def raw_documents(draw):
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return FuzzCase("random bytes", raw=draw(st.binary(max_size=200)))
    return [truncated_json, non_finite_literal, deep_json, odd_document][kind - 1](draw)


def fuzz_cases():
    return st.one_of(*[mutated_specs()] * 5, raw_documents())


# --- the checks ------------------------------------------------------------------------------------

def assert_good_error(err: cnngraph.CnnGraphError, case: FuzzCase, file: str | None) -> None:
    """One printable line of bounded length that says where: the file (when there is one), and a
    layer, a field or a JSON path, unless the document as a whole is the problem."""
    text = str(err)
    context = f"{case.label}: {type(err).__name__}: {text[:300]!r}"
    bad = [c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")]
    assert not bad, f"control or line-breaking characters {bad[:3]} in the message; {context}"
    assert len(text) <= MAX_MESSAGE, f"message of {len(text)} characters; {context}"
    if file is not None:
        assert err.file and err.file.startswith(file), f"the file is not named; {context}"
    located = err.layer is not None or err.field is not None or err.path is not None
    assert located or (isinstance(err, cnngraph.SpecError) and any(p in err.message for p in DOCUMENT_PROBLEMS)), \
        f"names no layer, field or path; {context}"
    if err.path is not None:
        assert err.path.startswith("/"), f"path {err.path!r} is not a JSON pointer; {context}"
        if isinstance(case.data, dict):
            assert_points_into(case.data, err.path, context)


def assert_points_into(data, pointer: str, context: str) -> None:
    """Every step of a JSON pointer but the last (a missing field may be the last) exists in `data`."""
    node = data
    for part in pointer.split("/")[1:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise AssertionError(f"path {pointer!r} does not point into the spec; {context}")


def quick_to_run(g) -> bool:
    flops = sum(flops for _, flops in g.nodes(data="flops", default=0))
    weights = sum(math.prod(shape) for node in layer_nodes(g)
                  for shape in g.nodes[node]["compute"].spec.weight_shapes(in_shapes(g, node)).values())
    return flops <= RUN_FLOPS_LIMIT and weights <= RUN_WEIGHTS_LIMIT


def validate(case: FuzzCase, path: Path):
    """load_spec + build (or parse_spec + build for a dict case), with time and memory checked."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        spec = cnngraph.parse_spec(materialize(case.data)) if case.as_dict else cnngraph.load_spec(path)
        return spec, cnngraph.build(spec, batch_size=1)
    finally:  # checked whether it raised or not: a slow or memory-hungry refusal fails too
        seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert seconds < MAX_VALIDATE_SECONDS, f"{case.label}: validation took {seconds:.2f} s"
        assert peak < MAX_BUILD_MEMORY, f"{case.label}: validation traced {peak / 2**20:.0f} MiB"


FUZZ_RTOL = 1e-3  # float32 against float64 on random, possibly ill-conditioned mutated networks


def compile_and_run(spec) -> None:
    """Compile, run, and check the results, not only that nothing crashed: against the float64
    PyTorch oracle wherever it is finite (random weights on a mutated network may overflow)."""
    from torch_oracle import run_spec

    model = cnngraph.compile(spec, batch_size=1, device="cpu")
    rng = np.random.default_rng(0)
    xs = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in model.input_shapes.items()}
    got = model(xs)
    got = got if isinstance(got, dict) else {model.output_names[0]: got}
    want = run_spec(spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                    {k: v.astype(np.float64) for k, v in model.weights.items()},
                    {k: v.astype(np.float64) for k, v in xs.items()})
    for name, value in got.items():
        reference = want[name]
        assert value.shape == reference.shape, (name, value.shape, reference.shape)
        if not np.isfinite(reference).all() or np.abs(reference).max(initial=0) > 1e30:
            continue  # overflowed in float64 already (or nearly): nothing to compare
        error = np.linalg.norm(value.astype(np.float64) - reference) / max(np.linalg.norm(reference), 1e-30)
        assert error <= FUZZ_RTOL, f"output {name}: relative error {error:.2e} against float64 PyTorch"


def check_case(case: FuzzCase, tmp_path: Path) -> str:
    """Run one case; returns what happened ("error", "built" or "ran") or fails the test."""
    path = tmp_path / "spec.json"
    path.write_bytes(case.file_bytes())
    file = None if case.as_dict else str(path)
    start = time.perf_counter()
    try:
        spec, g = validate(case, path)
        if not quick_to_run(g):
            return "built"
        with np.errstate(all="ignore"):  # random weights on a mutated network may overflow: not an error
            compile_and_run(spec)
        return "ran"
    except cnngraph.CnnGraphError as err:
        assert_good_error(err, case, file)
        return "error"
    finally:
        seconds = time.perf_counter() - start
        assert seconds < MAX_CASE_SECONDS, f"{case.label}: took {seconds:.1f} s"


# --- the fuzz tests --------------------------------------------------------------------------------

def test_fuzz_api(request, tmp_path):
    outcomes = {"error": 0, "built": 0, "ran": 0}

    @fuzz(request, DEFAULT_EXAMPLES)
    @given(fuzz_cases())
    def prop(case):
        outcomes[check_case(case, tmp_path)] += 1

    prop()
    print(f"fuzz outcomes: {outcomes}")
    assert outcomes["error"] and outcomes["ran"] + outcomes["built"], outcomes  # both kinds are exercised


def test_fuzz_cli(request, tmp_path, capsys):
    @fuzz(request, DEFAULT_EXAMPLES // 5)
    @given(fuzz_cases())
    def prop(case):
        path = tmp_path / "spec.json"
        path.write_bytes(case.file_bytes())
        check_cli(["validate", str(path)], case, capsys)
        try:
            small = quick_to_run(cnngraph.build(path))
        except cnngraph.CnnGraphError:
            return
        if small:
            with np.errstate(all="ignore"):
                check_cli(["run", str(path), "--device", "cpu"], case, capsys)

    prop()


def check_cli(argv: list[str], case: FuzzCase, capsys) -> int:
    """`cnngraph ARGV` in-process: exit 0, or 2 with exactly one "error: ..." line on stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), f"{case.label}: {argv[0]} exited {code}: {err[:300]!r}"
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), \
            f"{case.label}: {argv[0]}: not one error line: {err[:300]!r}"
        assert "Traceback" not in err
    return code


# --- sizes that must be refused at once, without allocating ----------------------------------------

def small_net(layers, shape=(3, 32, 32)) -> dict:
    return {"format_version": 1, "name": "t", "inputs": [{"name": "image", "shape": list(shape)}], "layers": layers}


CONV = {"op": "conv2d", "name": "c1", "out_channels": 8, "kernel_size": 3}


@pytest.mark.parametrize("spec, batch, where", [
    (small_net([{**CONV, "out_channels": 10**12}]), 1, "c1"),
    (small_net([CONV], shape=(3, 10**6, 10**6)), 1, "/inputs/0"),
    (EXAMPLES["lenet5"], 10**9, "/inputs/0"),
    (small_net([{"op": "flatten", "name": "f"}], shape=(10**7, 10**7, 10**7)), 1, "/inputs/0"),
    (small_net([{**CONV, "kernel_size": 2**62, "padding": 2**62}]), 1, "c1"),
    (small_net([{"op": "upsample2d", "name": "up", "scale_factor": [10**6, 10**6]}]), 1, "up"),
], ids=["out_channels_1e12", "input_1e6x1e6", "batch_1e9", "input_1e21_flattened", "kernel_2e62", "upsample_1e6"])
def test_huge_sizes_fail_fast_without_memory(spec, batch, where):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(cnngraph.ShapeError) as info:
            cnngraph.build(spec, batch_size=batch)
    finally:
        seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert seconds < 1.0 and peak < 50 * 2**20, (seconds, peak)
    assert where in (info.value.layer, info.value.path), str(info.value)
    assert "\n" not in str(info.value) and "elements" in str(info.value)


# --- regressions: bugs the fuzzer found, minimised --------------------------------------------------
# Each was a crash, a message of many lines or kilobytes, a message that named no place, or a bad
# value accepted. They run through the API and through `cnngraph validate`.

@dataclass
class Regression:
    id: str
    data: dict  # a spec (it may hold Deep values)
    error: type  # the CnnGraphError subclass expected
    phrases: tuple[str, ...]  # the one line must contain these
    as_dict: bool = False  # through the Python API only (deep data cannot come from a JSON file)


def cycle_of(n: int, name_length: int) -> list[dict]:
    names = [f"{i:0{name_length}d}" for i in range(n)]
    return [{"op": "relu", "name": name, "inputs": [names[i - 1]]} for i, name in enumerate(names)]


REGRESSIONS = [
    # control characters reached the error line: a terminal escape, or a newline splitting it in two
    Regression("control_character_in_op", small_net([{**CONV, "op": "\x1f"}]), cnngraph.SpecError,
               ('layer "c1"', 'unknown op "\\x1f"')),
    Regression("newline_in_layer_name", small_net([{**CONV, "name": "a\nb"}]), cnngraph.SpecError,
               ('layer "a\\nb"', 'field "name"', "control characters, line breaks")),
    # a right-to-left override made a name display as another one
    Regression("bidi_override_in_layer_name", small_net([{**CONV, "name": "ab\u202ecd"}]), cnngraph.SpecError,
               ('layer "ab\\u202ecd"', 'field "name"', "bidirectional overrides")),
    Regression("bidi_isolate_in_input_name", {**small_net([CONV]), "inputs": [{"name": "x\u2066", "shape": [3, 8, 8]}]},
               cnngraph.SpecError, ("/inputs/0/name", "bidirectional overrides")),
    Regression("escape_in_network_name", {**small_net([CONV]), "name": "\x1b[2J"}, cnngraph.SpecError,
               ("/name", "control characters")),
    # a 100000-character name made a 100 KB message
    Regression("long_unknown_input", small_net([{**CONV, "inputs": [LONG_NAME]}]), cnngraph.SpecError,
               ('field "inputs"', "unknown input", "(100,000 characters)")),
    Regression("long_unknown_op", small_net([{**CONV, "op": LONG_NAME}]), cnngraph.SpecError,
               ('layer "c1"', "unknown op", "(100,000 characters)")),
    Regression("long_unknown_top_level_key", {**small_net([CONV]), LONG_NAME: 1}, cnngraph.SpecError,
               ("unknown field", "(100,000 characters)", "valid fields: $schema")),
    Regression("long_cycle_of_long_names", small_net(cycle_of(150, 250)), cnngraph.SpecError,
               ('field "inputs"', "cycle", "more)")),
    # an unknown key that is empty or not an identifier was dropped from the location and the message
    Regression("empty_top_level_key", {**small_net([CONV]), "": 1}, cnngraph.SpecError,
               ('field ""', 'unknown field ""')),
    Regression("key_with_a_space", small_net([{**CONV, "kernel size": 3}]), cnngraph.SpecError,
               ('layer "c1"', 'field "kernel size"', 'did you mean "kernel_size"')),
    # an unknown field of a network input listed the top-level fields as the valid ones
    Regression("typo_in_network_input", {**small_net([CONV]), "inputs": [{"name": "image", "shpe": [3, 8, 8]}]},
               cnngraph.SpecError, ("/inputs/0", 'field "shpe"', 'did you mean "shape"', "valid fields: name, shape")),
    # Literal[1] took true and 1.0 although the format is strict about JSON types
    Regression("format_version_true", {**small_net([CONV]), "format_version": True}, cnngraph.SpecError,
               ("/format_version", "integer 1", "True")),
    Regression("format_version_float", {**small_net([CONV]), "format_version": 1.0}, cnngraph.SpecError,
               ("/format_version", "integer 1", "1.0")),
    # NaN passed as a dict (JSON cannot say NaN) was "not less than 1" rather than not a number
    Regression("dropout_p_nan", small_net([{"op": "dropout", "name": "d", "p": math.nan}]), cnngraph.SpecError,
               ('layer "d"', 'field "p"', "finite number"), as_dict=True),
    # a 400-digit integer went through to the shape rules and into the message
    Regression("int_beyond_64_bits", small_net([{**CONV, "out_channels": 10**400}]), cnngraph.SpecError,
               ('field "out_channels"', "less than or equal to 9223372036854775807")),
    # repr() of a deeply nested value (passed as a dict) raised RecursionError
    Regression("deep_list_in_a_field", small_net([{**CONV, "kernel_size": Deep(5000, "list")}]), cnngraph.SpecError,
               ('layer "c1"', 'field "kernel_size"', "nested more than"), as_dict=True),
    Regression("deep_list_as_a_layer", small_net([Deep(5000, "list")]), cnngraph.SpecError,
               ('layer "layer_0"', "/layers/0", "nested more than"), as_dict=True),
    Regression("deep_dict_as_the_op", small_net([{**CONV, "op": Deep(5000, "dict")}]), cnngraph.SpecError,
               ('field "op"', "nested more than"), as_dict=True),
    # the network input was never size-checked: a flatten of 2**64 elements wrapped around to 0
    # features in np.prod, built, and compile died of ZeroDivisionError
    Regression("flatten_of_2_64_elements",
               small_net([{"op": "flatten", "name": "f"}, {"op": "linear", "out_features": 3}],
                         shape=(2**21, 2**21, 2**22)),
               cnngraph.ShapeError, ("/inputs/0", 'field "shape"', "18,446,744,073,709,551,616 elements")),
]


@pytest.mark.parametrize("case", REGRESSIONS, ids=lambda r: r.id)
def test_regression(case, tmp_path, capsys):
    fuzz_case = FuzzCase(case.id, data=case.data, as_dict=case.as_dict)
    path = tmp_path / f"{case.id}.json"
    path.write_bytes(fuzz_case.file_bytes())
    with pytest.raises(case.error) as info:
        cnngraph.build(materialize(case.data) if case.as_dict else path)
    assert_good_error(info.value, fuzz_case, None if case.as_dict else str(path))
    for phrase in case.phrases:
        assert phrase in str(info.value), f"{phrase!r} not in {str(info.value)!r}"
    if not case.as_dict:
        assert check_cli(["validate", str(path)], fuzz_case, capsys) == 2


def test_many_outputs_are_checked_in_linear_time():
    """Duplicate and unknown outputs were found with list.count and `in list`: 20000 outputs took 4 s."""
    spec = {**small_net([CONV]), "outputs": [f"o{i}" for i in range(20_000)]}
    start = time.perf_counter()
    with pytest.raises(cnngraph.SpecError, match='unknown output "o0"'):
        cnngraph.parse_spec(spec)
    assert time.perf_counter() - start < 1.0
