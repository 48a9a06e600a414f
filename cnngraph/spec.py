"""The spec format (version 1): the Pydantic models of a network and `load_spec`.

Validation errors become one-line `SpecError`s that name the file, the layer (by name and JSON
path) and the field, and suggest the closest valid name for a typo.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .errors import NAME_LIMIT, SpecError, quote
from .files import given_path
from .ops import ACTIVATIONS, LAYER_TYPES, OPS, Layer
from .ops.base import Name, PositiveInt, Strict
from .preprocess import Preprocess

LayerSpec = Annotated[Union[tuple(LAYER_TYPES)], Field(discriminator="op")]


class InputSpec(Strict):
    name: Name
    shape: list[PositiveInt] = Field(min_length=1, max_length=3,
                                     description="Per-sample shape: [C, H, W] for images or [F] for vectors.")

    @field_validator("shape")
    @classmethod
    def _rank(cls, shape):
        if len(shape) == 2:
            raise ValueError("must be [C, H, W] for an image or [F] for a vector, not 2 numbers")
        return shape


class NetworkSpec(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True,
                              title="cnngraph network spec (format version 1)")

    schema_: str | None = Field(None, alias="$schema", description="Path or URL of this JSON Schema, for editors.")
    format_version: Literal[1]
    name: Name = "network"
    inputs: list[InputSpec] = Field(min_length=1)
    layers: list[LayerSpec] = Field(min_length=1)
    outputs: list[str] | None = Field(None, min_length=1, description="Layers whose results are returned; "
                                                                      "default: the last layer.")
    preprocess: Preprocess | None = Field(None, description="How an image file becomes the (one) input: "
                                                            "what `cnngraph predict` does to each image.")
    labels: list[str] | str | None = Field(None, description="Class names of the output, in order: a list, or "
                                                             "the path of a text file (one name a line) relative "
                                                             "to the spec's folder.")
    _source: str | None = PrivateAttr(None)  # the file it was loaded from, for error messages

    @field_validator("layers")
    @classmethod
    def _default_names_and_inputs(cls, layers: list[Layer], info):
        """Fill in `<op>_<index>` names and the default input (the previous layer, or the first
        network input for the first layer), so later stages never deal with defaults."""
        inputs = info.data.get("inputs") or []
        filled, previous = [], inputs[0].name if inputs else None
        for index, layer in enumerate(layers):
            name = layer.name or f"{layer.op}_{index}"
            update = {"name": name}
            if layer.inputs is None and previous is not None:
                update["inputs"] = [previous]
            filled.append(layer.model_copy(update=update))
            previous = name
        return filled

    @field_validator("format_version", mode="before")
    @classmethod
    def _integer_version(cls, value):
        """Literal[1] alone takes true and 1.0 (they equal 1); the version is the integer 1."""
        if isinstance(value, (bool, float)):
            raise ValueError(f"must be the integer 1, got {value!r}")
        return value

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs) if self.outputs else [self.layers[-1].name]

    def label_names(self) -> list[str] | None:
        """The class names, read from the labels file (next to the spec) when `labels` names one."""
        if not isinstance(self.labels, str):
            return self.labels
        path = Path(self.source).parent / self.labels if self.source else Path(self.labels)
        try:
            names = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise SpecError(f"cannot read the labels file {path}: {getattr(err, 'strerror', None) or err}",
                            file=self.source, field="labels") from None
        names = [name.strip() for name in names]
        while names and not names[-1]:  # a final newline, or a few
            names.pop()
        return names


def json_schema() -> dict:
    """The JSON Schema of the spec format, generated from the models (never written by hand)."""
    schema = NetworkSpec.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _check_references(spec: NetworkSpec) -> None:
    """Unique names, known references, input counts that fit the op, known outputs."""
    seen: dict[str, str] = {}
    for inp in spec.inputs:
        if inp.name in seen:
            raise SpecError(f"duplicate network input name {quote(inp.name)}", path="/inputs", field="name")
        seen[inp.name] = "network input"
    for index, layer in enumerate(spec.layers):
        where = dict(layer=layer.name, path=f"/layers/{index}")
        if layer.name in seen:
            raise SpecError(f"duplicate name {quote(layer.name)} (already used by a {seen[layer.name]})",
                            field="name", **where)
        seen[layer.name] = "layer"
    valid = ", ".join(sorted(seen))
    for index, layer in enumerate(spec.layers):
        where = dict(layer=layer.name, path=f"/layers/{index}")
        for ref in layer.inputs:
            if ref not in seen:
                raise SpecError(f"unknown input {quote(ref)}{_suggest(ref, seen)}; valid: {_clip(valid)}",
                                field="inputs", **where)
        lo, hi = layer.arity
        if not lo <= len(layer.inputs) <= (hi or len(layer.inputs)):
            need = f"at least {lo}" if hi is None else str(lo)
            raise SpecError(f"{layer.op} takes {need} input(s), got {len(layer.inputs)}", field="inputs", **where)
    layer_names = [layer.name for layer in spec.layers]
    repeated = sorted(name for name, count in Counter(spec.output_names).items() if count > 1)
    if repeated:
        raise SpecError(f"output {quote(repeated[0])} is listed more than once", field="outputs", path="/outputs")
    known = set(layer_names)  # a set: a spec may list thousands of outputs
    for out in spec.output_names:
        if out not in known:
            raise SpecError(f"unknown output {quote(out)}{_suggest(out, layer_names)}; outputs must name layers: "
                            f'{_clip(", ".join(layer_names))}', field="outputs", path="/outputs")


def _check_preprocess(spec: NetworkSpec) -> None:
    """A preprocess block must make exactly the network's one input."""
    if spec.preprocess is None:
        return
    if len(spec.inputs) != 1:
        raise SpecError(f"preprocess makes one input; this network has {len(spec.inputs)}", path="/preprocess")
    problem = spec.preprocess.problem_with(tuple(spec.inputs[0].shape))
    if problem:
        raise SpecError(problem[1], path="/preprocess", field=problem[0])


def parse_spec(data: Any, source: str | None = None) -> NetworkSpec:
    """A validated NetworkSpec from parsed JSON data, or a one-line SpecError."""
    if not isinstance(data, dict):
        raise SpecError(f"a spec must be a JSON object, got {type(data).__name__}", file=source)
    try:
        _check_nesting(data)
        spec = NetworkSpec.model_validate(data)
    except ValidationError as err:
        raise _spec_error(err, data).located(source) from None
    except SpecError as err:
        raise err.located(source) from None
    spec._source = source
    try:
        _check_references(spec)
        _check_preprocess(spec)
    except SpecError as err:
        raise err.located(source) from None
    return spec


MAX_NESTING = 16  # a spec is 4 levels deep at most: layers, a layer, its activation, a parameter


def _check_nesting(data: dict) -> None:
    """Refuse data nested far deeper than any spec, before Pydantic and repr() recurse through it
    (a list 5000 levels deep, passed as a dict, would otherwise end in a RecursionError)."""
    stack = [(data, ())]
    while stack:
        value, loc = stack.pop()
        if len(loc) > MAX_NESTING:
            raise _nesting_error(data, loc)
        if isinstance(value, dict):
            stack.extend((child, (*loc, key)) for key, child in value.items())
        elif isinstance(value, list):
            stack.extend((child, (*loc, index)) for index, child in enumerate(value))


def _nesting_error(data: dict, loc: tuple) -> SpecError:
    """The error names the layer (or network input) and the field the deep value is in."""
    message = f"nested more than {MAX_NESTING} levels deep (a spec has 4 at most)"
    if loc[0] in ("layers", "inputs") and isinstance(loc[1], int):
        layer = _layer_name(data, loc[1]) if loc[0] == "layers" else None
        field = loc[2] if isinstance(loc[2], str) else None  # None: the layer itself is a deep list
        return SpecError(message, layer=layer, path=f"/{loc[0]}/{loc[1]}", field=field)
    return SpecError(message, field=str(loc[0]))


def _layer_name(data: dict, index: int) -> str:
    """The name of layer `index` of the raw data: its own, else the default `<op>_<index>`."""
    raw = data["layers"][index] if isinstance(data.get("layers"), list) else {}
    raw = raw if isinstance(raw, dict) else {}
    name, op = raw.get("name"), raw.get("op")
    return name if isinstance(name, str) and name else f"{op if isinstance(op, str) else 'layer'}_{index}"


def load_spec(path: str | Path) -> NetworkSpec:
    """Read and validate a spec file. Raises SpecError (with file, line and column for bad JSON)."""
    path = given_path(path, "a spec file must be a path", SpecError)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read the spec: {getattr(err, 'strerror', None) or err}", file=source) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise SpecError(f"invalid JSON: {err.msg}", file=f"{source}:{err.lineno}:{err.colno}") from None
    except (ValueError, RecursionError) as err:
        raise SpecError(f"invalid JSON: {err}", file=source) from None
    return parse_spec(data, source)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys are all different: with a key given twice, JSON's last-wins rule
    would silently drop the first value, hiding the mistake."""
    data = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"key {quote(key)} appears twice in one object; give each field once")
        data[key] = value
    return data


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


# --- turning a Pydantic error into one line ----------------------------------------------------

# error types that only say "this union branch wants another type"; a branch that got further
# (a range error inside the list form of kernel_size, say) explains the problem better
_TYPE_MISMATCH = {"int_type", "int_parsing", "int_from_float", "float_type", "float_parsing", "bool_type",
                  "bool_parsing", "string_type", "list_type", "dict_type", "model_type", "literal_error"}


def _is_branch_tag(part) -> bool:
    """A union branch in a Pydantic location ("constrained-int", "list[constrained-int]"), not a field."""
    return isinstance(part, str) and not part.isidentifier() and part != "$schema"


def _location(e: dict) -> list:
    """An error's location without union branches; an unknown field's own key is kept whatever it
    looks like ("kernel size" is not an identifier, but it is what the user wrote)."""
    loc, keep_last = e["loc"], e["type"] == "extra_forbidden"
    return [part for i, part in enumerate(loc) if not _is_branch_tag(part) or (keep_last and i == len(loc) - 1)]


def _site(e: dict) -> tuple:
    """Where an error is: its location without union branches and list indices (the layer index kept)."""
    loc = e["loc"]
    return tuple(p for i, p in enumerate(loc) if (i < 2 or not isinstance(p, int)) and not _is_branch_tag(p))


def _best_error(errors: list[dict]) -> dict:
    """The one error to report. An unknown field comes first: a typo (`kernal_size`) is what causes
    the "missing kernel_size" beside it. Otherwise the first bad field, and of the union branches
    tried for it, one that failed on more than the type ([0, 3] for kernel_size is a bad list)."""
    for e in errors:
        if e["type"] == "extra_forbidden":
            return e
    site = _site(errors[0])

    def rank(e):
        mismatch = e["type"] in _TYPE_MISMATCH and not (e["type"] == "literal_error" and isinstance(e["input"], str))
        return mismatch, -len(e["loc"])

    return min((e for e in errors if _site(e) == site), key=rank)


def _spec_error(err: ValidationError, data: dict) -> SpecError:
    e = _best_error(err.errors(include_url=False))
    loc, kind = _location(e), e["type"]
    layer = path = None
    model = InputSpec if loc[:1] == ["inputs"] else NetworkSpec
    model_fields = {f.alias or name for name, f in model.model_fields.items()}
    if len(loc) >= 2 and loc[0] == "layers" and isinstance(loc[1], int):
        index = loc[1]
        layer, path = _layer_name(data, index), f"/layers/{index}"
        rest = loc[2:]
        if rest and rest[0] in OPS:
            model_fields = set(OPS[rest[0]].model_fields)
            rest = rest[1:]
        # drop the union tags of nested activation objects: activation.leaky_relu.x -> activation.x
        if len(rest) >= 2 and rest[0] == "activation" and rest[1] in ACTIVATIONS:
            model_fields = set(ACTIVATIONS[rest[1]].model_fields)
            rest = [rest[0], *rest[2:]]
        loc = rest
    field = ".".join(str(part) for part in loc if not isinstance(part, int)) or None
    if (e.get("ctx") or {}).get("field"):  # raised by a model validator that knows the field
        field = ".".join(filter(None, [field, e["ctx"]["field"]]))
    if path is None:  # outside the layers a JSON pointer says where; an unknown key is the field
        container = loc[:-1] if kind == "extra_forbidden" else loc
        path = "/" + "/".join(str(part) for part in container) if container else None
        field = str(loc[-1]) if kind == "extra_forbidden" else None
    return SpecError(_describe(e, kind, loc, model_fields), layer=layer, path=path, field=field)


def _describe(e: dict, kind: str, loc: list, model_fields: set[str]) -> str:
    ctx = e.get("ctx") or {}
    got = e.get("input")
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else ""
        valid = ", ".join(sorted(model_fields))
        return f"unknown field {quote(name)}{_suggest(name, model_fields)}; valid fields: {valid}"
    if kind == "missing":
        return "missing required field"
    if kind == "union_tag_invalid":
        tag = ctx.get("tag")
        valid = list(OPS) if "activation" not in loc else list(ACTIVATIONS)
        return f'unknown op {quote(tag)}{_suggest(str(tag), valid)}; valid ops: {", ".join(valid)}'
    if kind == "union_tag_not_found":
        return 'missing "op" (every layer names its op, e.g. "conv2d")'
    if kind == "invalid_value":
        return e["msg"]
    if kind == "value_error":  # raised by a field validator: the message is ours, without Pydantic's prefix
        return e["msg"].removeprefix("Value error, ")
    if kind in ("too_short", "too_long"):
        bound = f"at least {ctx['min_length']}" if kind == "too_short" else f"at most {ctx['max_length']}"
        return f"should have {bound} item(s), got {ctx['actual_length']}"
    if isinstance(got, (dict, list)):  # shown in full it could be megabytes
        return e["msg"]
    return f"{e['msg'].rstrip('.')}, got {_clip(repr(got), 60)}"


def _suggest(name: str, options) -> str:
    if len(name) > 2 * NAME_LIMIT:  # nothing valid is that long; and difflib's time grows with it
        return ""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def spec_json(spec: NetworkSpec) -> str:
    """The spec as JSON text a person would write: one layer per line, `op` first, defaults left out,
    `inputs` only where a layer reads something other than the layer before it."""
    previous = spec.inputs[0].name
    layers = []
    for layer in spec.layers:
        data = layer.model_dump(mode="json", exclude_defaults=True)
        if data.get("inputs") == [previous]:
            del data["inputs"]
        if isinstance(data.get("activation"), dict) and list(data["activation"]) == ["op"]:
            data["activation"] = data["activation"]["op"]
        layers.append({"op": data.pop("op"), "name": data.pop("name"), **data})
        previous = layer.name
    head = {"format_version": 1, "name": spec.name, "inputs": [i.model_dump(mode="json") for i in spec.inputs]}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines += ['  "layers": [', ",\n".join(f"    {json.dumps(layer)}" for layer in layers), "  ],"]
    lines += [f'  "outputs": {json.dumps(spec.output_names)}']
    return "{\n" + "\n".join(lines) + "\n}\n"
