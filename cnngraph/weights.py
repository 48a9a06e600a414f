"""Weights: the PyTorch `state_dict` key convention (`<layer>.weight`, `.bias`, `.running_mean`,
`.running_var`), `.npz` and `.safetensors` files (read without pickle, written atomically), a seeded
He initialisation, and the checks that name the key, the layer and both shapes.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Mapping

import networkx as nx
import numpy as np

from .errors import WeightsError
from .files import atomic_write
from .graph import in_shapes, layer_nodes

IGNORED_SUFFIXES = (".num_batches_tracked",)  # PyTorch bookkeeping, meaningless at inference

# safetensors dtype names <-> NumPy (BF16 has no NumPy dtype: it is widened to float32 on load)
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U8": "u1", "BOOL": "?"}


def expected_shapes(g: nx.DiGraph) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every weight key the network needs: key -> (shape, layer name). Call on the unoptimized graph."""
    expected = {}
    for node in layer_nodes(g):
        spec = g.nodes[node]["spec"]
        for suffix, shape in spec.weight_shapes(in_shapes(g, node)).items():
            expected[f"{spec.name}.{suffix}"] = (tuple(shape), spec.name)
    return expected


def init_weights(g: nx.DiGraph, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic weights, each layer seeded by (seed, its name) so editing one layer leaves the
    others unchanged. He-normal for conv/linear, PyTorch-style uniform biases."""
    weights = {}
    for node in layer_nodes(g):
        spec = g.nodes[node]["spec"]
        shapes = spec.weight_shapes(in_shapes(g, node))
        if shapes:
            rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
            for suffix, value in spec.init_weights(shapes, rng).items():
                weights[f"{spec.name}.{suffix}"] = value.astype(np.float32)
    return weights


def check_weights(weights: Mapping[str, np.ndarray], expected, file: str | None = None) -> dict[str, np.ndarray]:
    """The weights as contiguous float32 arrays, or a WeightsError for the first problem found."""
    where = {"file": file}
    for key, (shape, layer) in expected.items():
        if key not in weights:
            raise WeightsError(f'missing key "{key}" (expected shape {shape})', layer=layer, **where)
    checked = {}
    for key, value in weights.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if key not in expected:
            layer_keys = sorted(k for k in expected if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])
            hint = f"; that layer has {', '.join(layer_keys)}" if layer_keys else "; no layer of that name has weights"
            raise WeightsError(f'unexpected key "{key}"{hint}', **where)
        shape, layer = expected[key]
        value = np.asarray(value)
        if value.dtype.kind != "f":
            raise WeightsError(f'key "{key}" has dtype {value.dtype}; weights must be floating point',
                               layer=layer, **where)
        if value.shape != shape:
            raise WeightsError(f'key "{key}" has shape {value.shape}, expected {shape}', layer=layer, **where)
        if not np.isfinite(value).all():
            raise WeightsError(f'key "{key}" contains NaN or infinite values', layer=layer, **where)
        checked[key] = np.ascontiguousarray(value, dtype=np.float32)
    return checked


# --- files -------------------------------------------------------------------------------------

def load_weights(source: str | Path | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays by key from a `.npz` or `.safetensors` file, or a dict given as is."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        if path.suffix == ".safetensors":
            return _read_safetensors(path.read_bytes(), str(path))
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise WeightsError(f"cannot read weights: {getattr(err, 'strerror', None) or err}", file=str(path)) from None
    raise WeightsError("unknown weights format; use a .npz or .safetensors file", file=str(path))


def save_weights(weights: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write `.npz` or `.safetensors` (chosen by the suffix) through a temporary file and a rename,
    so a crash never leaves a half-written file."""
    path = Path(path)
    arrays = {key: np.asarray(value, order="C") for key, value in weights.items()}  # 0-d stays 0-d
    if path.suffix == ".npz":
        write = lambda f: np.savez(f, **arrays)  # noqa: E731
    elif path.suffix == ".safetensors":
        write = lambda f: f.write(_safetensors_bytes(arrays))  # noqa: E731
    else:
        raise WeightsError("unknown weights format; use a .npz or .safetensors file", file=str(path))
    atomic_write(path, write)


def _read_safetensors(blob: bytes, name: str) -> dict[str, np.ndarray]:
    def bad(why: str) -> WeightsError:
        return WeightsError(f"not a valid safetensors file: {why}", file=name)

    if len(blob) < 8:
        raise bad("shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > len(blob) - 8:
        raise bad("the header runs past the end of the file (truncated?)")
    try:
        header = json.loads(blob[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(f"header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data = memoryview(blob)[8 + header_len:]
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise bad(f'entry "{key}" lacks dtype, shape or data_offsets') from None
        if not (isinstance(dtype, str) and all(_is_count(n) for n in (*shape, begin, end))):
            raise bad(f'entry "{key}" has a malformed dtype, shape or data_offsets')
        if not 0 <= begin <= end <= len(data):
            raise bad(f'entry "{key}" points past the end of the data (truncated?)')
        raw = data[begin:end]
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            value = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype in _ST_DTYPES:
            value = np.frombuffer(raw, _ST_DTYPES[dtype])
        else:
            raise bad(f'entry "{key}" has unsupported dtype {dtype}')
        if value.size != int(np.prod(shape)):
            raise bad(f'entry "{key}" holds {value.size} values, its shape {list(shape)} needs {int(np.prod(shape))}')
        out[key] = value.reshape(shape).copy()
    return out


def _is_count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _safetensors_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    names = {np.dtype(v).str: k for k, v in _ST_DTYPES.items()}
    header, offset, chunks = {}, 0, []
    for key, value in arrays.items():
        little = value.astype(value.dtype.newbyteorder("<"), copy=False)
        if little.dtype.str not in names:
            raise WeightsError(f'cannot store key "{key}" with dtype {value.dtype} in safetensors')
        raw = little.tobytes()
        header[key] = {"dtype": names[little.dtype.str], "shape": list(value.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)
