"""`predict`: a compiled network over real inputs (image files, folders, globs, .npy/.npz arrays),
one result row per input.

Inputs are decoded by a pool of threads ahead of the device (Pillow releases the GIL while it
decodes), batched to the compiled batch size (the last batch padded), and run. A classifier's
row holds the top-K classes with their names (the spec's `labels`) and probabilities (softmax
applied unless the network ends in one); any other network's row holds its output array. An
input that cannot be read is a row with its `error`, never the end of the run.
"""

from __future__ import annotations

import glob
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .errors import CnnGraphError, InputError, SpecError, shorten
from .model import CompiledModel, as_spec, compile
from .preprocess import IMAGE_SUFFIXES, decode_image

ARRAY_SUFFIXES = (".npy", ".npz")


@dataclass
class Item:
    """One input: where it comes from (a path, `a.npy[3]` or `a.npz:key[3]`), and how to read it."""
    source: str
    read: Callable[[], np.ndarray]


def expand_inputs(inputs: Iterable[str | os.PathLike], spec) -> list[Item]:
    """The items named by files, folders (searched recursively for images and arrays), and glob
    patterns, in the order given (a folder's and a glob's files sorted). A name that matches
    nothing is an InputError: a typo must not turn into an empty run."""
    items = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES + ARRAY_SUFFIXES
                           and p.is_file())
        elif path.exists():
            files = [path]
        elif glob.has_magic(str(given)):
            files = sorted(Path(p) for p in glob.glob(str(given), recursive=True) if Path(p).is_file())
        else:
            files = []
        if not files:
            raise InputError("no such file, or no images or arrays in it", file=str(given))
        for file in files:
            items += _array_items(file, spec) if file.suffix.lower() in ARRAY_SUFFIXES else [_image_item(file, spec)]
    return items


def _image_item(path: Path, spec) -> Item:
    def read() -> np.ndarray:
        if spec.preprocess is None:
            raise SpecError("the spec has no preprocess block, so images cannot become its input; add one "
                            '(e.g. {"resize": 256, "center_crop": 224})', file=spec.source, field="preprocess")
        return spec.preprocess(decode_image(path, spec.preprocess.color))
    return Item(str(path), read)


def _array_items(path: Path, spec) -> list[Item]:
    """One item per sample of a .npy (C, H, W) or (N, C, H, W) array, or of each array of a .npz,
    read by the same safe readers as `run --input` (headers checked first, nothing unpickled); an
    unreadable file is one item whose reading fails, and so is an array that is not floating point
    (integers, booleans, complex numbers: never cast silently) or not of the input's shape."""
    from .weights import read_arrays, read_npy
    try:
        if path.suffix.lower() == ".npz":
            arrays = {f"{path}:{key}": value for key, value in read_arrays(path, what="the arrays").items()}
        else:
            arrays = {str(path): read_npy(path)}
    except CnnGraphError as err:
        return [Item(str(path), _failing(err.message, str(path)))]
    shape = tuple(spec.inputs[0].shape)
    items = []
    for name, array in arrays.items():
        if array.dtype.kind != "f":
            items.append(Item(name, _failing(f"must hold floating-point numbers (float32; float16 and float64 "
                                             f"are converted), got {array.dtype}", name)))
        elif array.shape == shape:
            items.append(Item(name, lambda a=array: np.asarray(a, np.float32)))
        elif array.ndim == len(shape) + 1 and array.shape[1:] == shape:
            items += [Item(f"{name}[{i}]", lambda a=array, i=i: np.asarray(a[i], np.float32))
                      for i in range(array.shape[0])]
        else:
            items.append(Item(name, _failing(f"has shape {array.shape}; the network's input needs {shape} or "
                                             f"(N, *{shape})", name)))
    return items


def _failing(message: str, source: str) -> Callable[[], np.ndarray]:
    """An item's `read` that fails with `message`: the file could not be read, or holds no input."""
    def fail() -> np.ndarray:
        raise InputError(message, file=source)
    return fail


def predict(spec, inputs: Iterable[str | os.PathLike], weights=None, batch_size: int = 8, device: str = "auto",
            top: int = 5, workers: int = 4, precision: str = "fp32", skip: Iterable[str] = (),
            progress: Callable[[int], None] | None = None, ray: str | None = None) -> Iterator[dict]:
    """`spec`: a network as `compile` takes it, or a CompiledModel (then `weights`, `batch_size`,
    `device` and `precision` are its own). Rows, in input order: {"input", "error"} plus, for a
    classifier (one (N, K) output), "classes", "labels" (None without the spec's `labels`) and
    "probabilities" of the top `top`, or else "output" (the sample's output array, by output name
    when there are several). `skip`: inputs (their `input` values) already done; `progress(n)` is
    called as n more finish. `ray`: run on a Ray cluster instead ("local" starts one here, "auto"
    or "ray://host:10001" joins one; see cnngraph/ray.py), `workers` actors each compiling once."""
    model = spec if isinstance(spec, CompiledModel) else None
    spec = model.spec if model else as_spec(spec)
    if len(spec.inputs) != 1:
        raise SpecError(f"predict feeds one input; this network has {len(spec.inputs)}", file=spec.source)
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(i, (str, os.PathLike)) for i in inputs):
        raise InputError(f"inputs must be a path or a list of paths, got {shorten(inputs)}")
    for name, value in (("top", top), ("workers", workers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecError(f"{name} must be a positive integer, got {shorten(value)}")
    if progress is not None and not callable(progress):
        raise SpecError(f"progress must be a function of the number of inputs done, got {shorten(progress)}")
    skip = list(skip) if isinstance(skip, (list, tuple, set, frozenset)) else None
    if skip is None or not all(isinstance(s, str) for s in skip):
        raise SpecError("skip must be a list of input names (the `input` of rows already done)")
    done = set(skip)
    items = [item for item in expand_inputs(inputs, spec) if item.source not in done]
    if ray is not None:
        from .ray import predict_on_ray
        yield from predict_on_ray(spec, items, ray, weights=model.weights if model else weights,
                                  batch_size=model.batch_size if model else batch_size,
                                  device=model.device if model else device, top=top, workers=workers,
                                  precision=model.precision if model else precision, progress=progress)
        return
    rows = Rows(model or compile(spec, batch_size=batch_size, device=device, weights=weights, precision=precision),
                top)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for batch in _decoded_batches(pool, items, rows.model.batch_size, rows.shape):
            yield from rows.of([(item.source, x) for item, x in batch])
            if progress:
                progress(len(batch))


class Rows:
    """Turns decoded inputs into result rows with one compiled model: batches of (source, array or
    the error reading it) -> a row each. The local path and each Ray actor hold one."""

    def __init__(self, model: CompiledModel, top: int):
        self.model, self.top = model, top
        spec, g = model.spec, model.graph
        self.shape, self.labels, self.outputs = tuple(spec.inputs[0].shape), spec.label_names(), model.output_names
        out = self.outputs[0]
        self.classifier = len(self.outputs) == 1 and len(g.nodes[out]["shape"]) == 2
        if self.classifier and self.labels is not None and len(self.labels) != g.nodes[out]["shape"][1]:
            raise SpecError(f"has {len(self.labels)} names but the output has {g.nodes[out]['shape'][1]} classes",
                            file=spec.source, field="labels")
        self.probabilities = self.classifier and g.nodes[out]["compute"].op == "softmax"

    def of(self, batch: list[tuple[str, object]]) -> list[dict]:
        size = self.model.batch_size
        return [row for start in range(0, len(batch), size) for row in self._rows(batch[start:start + size])]

    def _rows(self, batch: list[tuple[str, object]]) -> list[dict]:
        good = [(source, x) for source, x in batch if not isinstance(x, Exception)]
        results = {}
        if good:
            xs = np.zeros((self.model.batch_size, *self.shape), np.float32)  # a short batch padded with zeros
            xs[:len(good)] = [x for _, x in good]
            y = self.model(xs)
            ys = y if isinstance(y, dict) else {self.outputs[0]: y}
            results = {source: {name: value[i] for name, value in ys.items()} for i, (source, _) in enumerate(good)}
        rows = []
        for source, x in batch:
            if isinstance(x, Exception):
                rows.append({"input": source, "error": getattr(x, "message", None) or str(x)})
            elif self.classifier:
                rows.append({"input": source, "error": None,
                             **_top_classes(results[source][self.outputs[0]], self.top, self.labels,
                                            self.probabilities)})
            else:
                out = results[source]
                rows.append({"input": source, "error": None, "output": out[self.outputs[0]] if len(out) == 1 else out})
        return rows


def _decoded_batches(pool, items: list[Item], size: int, shape) -> Iterator[list[tuple[Item, object]]]:
    """Batches of (item, its array or the error reading it), decoded by `pool` two batches ahead."""
    pending: deque = deque()
    queue = iter(items)

    def submit(count: int) -> None:
        for item in (next(queue, None) for _ in range(count)):
            if item is not None:
                pending.append((item, pool.submit(read_item, item, shape)))

    submit(3 * size)
    while pending:
        batch = [pending.popleft() for _ in range(min(size, len(pending)))]
        submit(len(batch))
        yield [(item, future.result()) for item, future in batch]


def read_item(item: Item, shape) -> np.ndarray | Exception:
    """The array of `item`, checked against the input `shape`, or the error reading it (a spec
    error stops the run: it is no fault of the file). Shared by the local path and Ray's decoding."""
    try:
        x = item.read()
    except SpecError:
        raise  # the spec's fault, not the file's: stops the run
    except CnnGraphError as err:
        return err
    except Exception as err:  # a decoder's own error type: the file is bad, the run goes on
        return InputError(f"cannot read: {str(err) or type(err).__name__}", file=item.source)
    if x.shape != shape:
        return InputError(f"makes a {x.shape} tensor, the input needs {shape}", file=item.source)
    return x


def _top_classes(scores: np.ndarray, top: int, labels: list[str] | None, probabilities: bool) -> dict:
    """The `top` classes by score: indices, names, and probabilities (softmax of the scores unless
    they already are probabilities), in float64."""
    scores = scores.astype(np.float64)
    if not probabilities:
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
    best = np.argsort(-scores, kind="stable")[:top]
    return {"classes": [int(i) for i in best], "labels": [labels[i] for i in best] if labels else None,
            "probabilities": [float(scores[i]) for i in best]}


# --- result tables ----------------------------------------------------------------------------------

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


def flat_row(row: dict, top: int) -> dict:
    """A row as table columns: input, class_1, label_1, probability_1, ..., output, error."""
    flat = {"input": row["input"]}
    for rank in range(top):
        for key, column in (("classes", "class"), ("labels", "label"), ("probabilities", "probability")):
            values = row.get(key) or []
            flat[f"{column}_{rank + 1}"] = values[rank] if rank < len(values) else None
    flat["output"] = row.get("output") if isinstance(row.get("output"), str) else None
    flat["error"] = row.get("error")
    return flat


def read_table(path: Path) -> list[dict]:
    """The rows of a table `write_table` wrote (for --resume), as flat dicts."""
    import csv
    import json

    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return _pyarrow().parquet.read_table(path).to_pylist()


def write_table(path: Path, rows: list[dict]) -> None:
    """Flat rows to .csv, .jsonl or .parquet, atomically (never half-written)."""
    import csv
    import io
    import json

    from .files import atomic_write

    columns = list(dict.fromkeys(key for row in rows for key in row)) or ["input", "error"]
    if path.suffix == ".csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, lambda f: f.write(text.getvalue().encode()))
    elif path.suffix == ".jsonl":
        atomic_write(path, lambda f: f.write("".join(json.dumps(row) + "\n" for row in rows).encode()))
    else:
        pa = _pyarrow()
        table = pa.Table.from_pylist(rows)
        atomic_write(path, lambda f: pa.parquet.write_table(table, f))


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 (the submodule)
    except ImportError:
        raise CnnGraphError("writing .parquet needs pyarrow (pip install pyarrow); or use .csv or .jsonl") from None
    return pyarrow
