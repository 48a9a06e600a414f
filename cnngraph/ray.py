"""`predict` on a Ray cluster with Ray Data (the `ray` extra).

The inputs become a dataset; decoding and preprocessing is one `map_batches` stage (tasks, on any
CPU of the cluster), inference another, on a pool of `Predictor` actors, each compiling the
network once (the kernel cache is shared on a machine), with a GPU each where the cluster has
GPUs. The rows are those of the local path, in input order.

`Predictor` is also the class to drop into a Ray Data pipeline of one's own:

    ds.map_batches(cnngraph.ray.Predictor, fn_constructor_kwargs={"spec": "resnet18.json",
                   "weights": "resnet18.safetensors", "batch_size": 32}, batch_size=32,
                   compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1)

It reads a column "x" of (C, H, W) float32 arrays (and, when present, "input" names and "error"
messages of inputs that could not be read) and returns the rows' columns.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .errors import CnnGraphError
from .model import compile
from .predict import Item, Rows, read_item

ROW_KEYS = ("input", "error", "classes", "labels", "probabilities", "output")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401 (the submodule)
    except ImportError:
        raise CnnGraphError('--ray needs Ray Data (pip install -e ".[ray]")') from None
    return ray


class Predictor:
    """A Ray Data callable class: compiles the network once per actor, then maps batches of
    decoded inputs to result rows (as columns)."""

    def __init__(self, spec, weights=None, batch_size: int = 32, device: str = "auto", top: int = 5,
                 precision: str = "fp32"):
        self.rows = Rows(compile(spec, batch_size=batch_size, device=device, weights=weights, precision=precision),
                         top)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["x"])
        sources = batch["input"] if "input" in batch else [str(i) for i in range(n)]
        errors = batch["error"] if "error" in batch else [None] * n
        decoded = [(str(s), CnnGraphError(e) if isinstance(e, str) and e else np.asarray(x, np.float32))
                   for s, x, e in zip(sources, batch["x"], errors)]  # Ray may turn a None into NaN
        rows = self.rows.of(decoded)
        return {key: _column([row.get(key) for row in rows]) for key in ROW_KEYS}


def decode(batch: dict, shape: tuple[int, ...]) -> dict:
    """The decode stage: a column "item" of inputs (`predict.Item`) -> "input", "x", "error"."""
    sources, xs, errors = [], [], []
    for item in batch["item"]:
        x = read_item(item, shape)
        sources.append(item.source)
        failed = isinstance(x, Exception)
        xs.append(np.zeros(shape, np.float32) if failed else x)
        errors.append((getattr(x, "message", None) or str(x)) if failed else None)
    return {"input": _column(sources), "x": np.stack(xs), "error": _column(errors)}


def predict_on_ray(spec, items: list[Item], address: str, weights=None, batch_size: int = 8, device: str = "auto",
                   top: int = 5, workers: int = 2, precision: str = "fp32",
                   progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """`predict`'s rows, computed by Ray Data on the cluster at `address` ("local": a new one on
    this machine)."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
    if not items:
        return
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in input order, as locally
    context.enable_progress_bars = False
    gpus = 1 if device in ("auto", "cuda") and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    device = "cuda" if gpus else ("cpu" if device == "auto" else device)
    shape = tuple(spec.inputs[0].shape)
    dataset = ray.data.from_items([{"item": item} for item in items])
    decoded = dataset.map_batches(decode, batch_size=batch_size, fn_kwargs={"shape": shape})
    predicted = decoded.map_batches(Predictor, batch_size=batch_size, num_gpus=gpus,
                                    compute=ray.data.ActorPoolStrategy(size=workers),
                                    fn_constructor_kwargs={"spec": spec, "weights": weights, "batch_size": batch_size,
                                                           "device": device, "top": top, "precision": precision})
    for row in predicted.iter_rows():
        yield _plain(row)
        if progress:
            progress(1)


def _column(values: list) -> np.ndarray:
    """An object column: Ray keeps lists, None and arrays in it as they are."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _plain(row: dict) -> dict:
    """A row as the local path makes it: lists, not arrays, and no keys the row does not have."""
    out = {}
    for key in ROW_KEYS:
        value = row.get(key)
        if key == "error" and not isinstance(value, str):
            value = None  # Ray may turn a None into NaN
        if key in ("classes", "labels", "probabilities") and value is not None:
            value = [v.item() if hasattr(v, "item") else v for v in value]
        if value is not None or key in ("input", "error") or (key == "labels" and row.get("classes") is not None):
            out[key] = value
    return out
