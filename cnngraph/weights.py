"""Weights: the PyTorch `state_dict` key convention (`<layer>.weight`, `.bias`, `.running_mean`,
`.running_var`), `.npz` and `.safetensors` files (read without pickle, written atomically), a seeded
He initialisation, and the checks that name the key, the layer and both shapes.
"""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Mapping

import networkx as nx
import numpy as np

from .errors import CnnGraphWarning, WeightsError
from .files import atomic_write
from .graph import in_shapes, layer_nodes
from .ops.base import weight_key

IGNORED_SUFFIXES = (".num_batches_tracked",)  # PyTorch bookkeeping, meaningless at inference

# safetensors dtype names <-> NumPy (BF16 has no NumPy dtype: it is widened to float32 on load)
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U8": "u1", "BOOL": "?"}


def expected_shapes(g: nx.DiGraph) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every weight key the network needs: key -> (shape, layer name). Call on the unoptimized graph."""
    expected = {}
    for node in layer_nodes(g):
        spec = g.nodes[node]["compute"].spec
        for suffix, shape in spec.weight_shapes(in_shapes(g, node)).items():
            expected[weight_key(spec.name, suffix)] = (tuple(shape), spec.name)
    return expected


def init_weights(g: nx.DiGraph, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic weights, each layer seeded by (seed, its name) so editing one layer leaves the
    others unchanged. He-normal for conv/linear, PyTorch-style uniform biases."""
    weights = {}
    for node in layer_nodes(g):
        spec = g.nodes[node]["compute"].spec
        shapes = spec.weight_shapes(in_shapes(g, node))
        if shapes:
            rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
            for suffix, value in spec.init_weights(shapes, rng).items():
                weights[weight_key(spec.name, suffix)] = np.asarray(value, np.float32)  # no copy when float32
    return weights


def check_weights(weights: Mapping[str, np.ndarray], expected, file: str | None = None) -> dict[str, np.ndarray]:
    """The weights as contiguous float32 arrays, or a WeightsError for the first problem found.
    float16 and float64 weights are converted, with a CnnGraphWarning saying so: every
    kernel computes in float32, float16 widens exactly and float64 rounds to the nearest float32
    (refused when a value is beyond float32's range, where it would become infinite)."""
    where = {"file": file}
    for key, (shape, layer) in expected.items():
        if key not in weights:
            raise WeightsError(f'missing key "{key}" (expected shape {shape})', layer=layer, **where)
    checked, converted = {}, {}
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
        if value.shape != shape and shape[:value.ndim] == value.shape and all(d == 1 for d in shape[value.ndim:]):
            value = value.reshape(shape)  # trailing 1s omitted: nn.Linear's (K, C) weight in a 1x1 conv2d
        if value.shape != shape:
            raise WeightsError(f'key "{key}" has shape {value.shape}, expected {shape}', layer=layer, **where)
        if not np.isfinite(value).all():
            bad = np.argwhere(~np.isfinite(value))
            raise WeightsError(f'key "{key}" contains {len(bad)} NaN or infinite values (the first at index '
                               f"{tuple(int(i) for i in bad[0])})", layer=layer, **where)
        if value.dtype != np.float32:
            if np.abs(value).max(initial=0) > np.finfo(np.float32).max:
                raise WeightsError(f'key "{key}" has {value.dtype} values beyond float32\'s range '
                                   f"(|x| > 3.4e38), which cnngraph computes in", layer=layer, **where)
            converted[str(value.dtype)] = converted.get(str(value.dtype), 0) + 1
        checked[key] = np.ascontiguousarray(value, dtype=np.float32)
    if converted:
        counts = ", ".join(f"{n} {dtype}" for dtype, n in sorted(converted.items()))
        warnings.warn(f"{file + ': ' if file else ''}converted {counts} weight tensor(s) to float32, the "
                      f"precision every kernel computes in", CnnGraphWarning, stacklevel=3)
    return checked


# --- files -------------------------------------------------------------------------------------

def load_weights(source: str | Path | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays by key from a `.npz` or `.safetensors` file, or a dict given as is. Every header is
    checked against the file's size before any data is read, and nothing is ever unpickled."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.suffix not in (".npz", ".safetensors"):
        raise WeightsError("unknown weights format; use a .npz or .safetensors file", file=str(path))
    try:
        with open(path, "rb") as f:
            return _read_npz(f, str(path)) if path.suffix == ".npz" else _read_safetensors(f, str(path))
    except WeightsError:
        raise
    except Exception as err:  # zipfile alone raises a dozen types (BadZipFile, RuntimeError, NotImplementedError, ...)
        why = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise WeightsError(f"cannot read weights: {why}", file=str(path)) from None


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


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_npz(f: BinaryIO, name: str) -> dict[str, np.ndarray]:
    """A zip of .npy arrays (what np.savez writes). Each member's header is read first: object
    arrays (pickles) are refused, and a shape the member's size cannot hold is never allocated."""
    if not zipfile.is_zipfile(f):
        raise WeightsError("not a .npz file (a zip archive of .npy arrays)", file=name)
    file_size, out = os.fstat(f.fileno()).st_size, {}
    with zipfile.ZipFile(f) as archive:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    read_header = NPY_HEADER_READERS.get(version)
                    if read_header is None:
                        raise ValueError(f"unsupported .npy format version {version}")
                    shape, fortran, dtype = read_header(member)
                except ValueError as err:
                    raise WeightsError(f'entry "{key}" is not a .npy array ({err})', file=name) from None
                if dtype.hasobject:
                    raise WeightsError(f'entry "{key}" holds Python objects; cnngraph never unpickles, '
                                       f"save plain numeric arrays", file=name)
                nbytes = dtype.itemsize * math.prod(shape)
                can_hold = min(info.file_size, MAX_DEFLATE_RATIO * info.compress_size) - member.tell()
                if nbytes > can_hold or info.compress_size > file_size:
                    raise WeightsError(f'entry "{key}" declares shape {shape} ({nbytes:,} bytes), more than it can '
                                       f"hold (truncated or corrupt?)", file=name)
                value = np.frombuffer(_read_exactly(member, nbytes, key, name), dtype)
                out[key] = value.reshape(shape, order="F" if fortran else "C").copy()
    return out


MAX_DEFLATE_RATIO = 1100  # deflate expands at most ~1032x: a zip cannot honestly hold more than this
READ_CHUNK = 16 * 2**20


def _read_exactly(member, nbytes: int, key: str, name: str) -> bytearray:
    """`nbytes` of a zip member, read in chunks so that memory grows with the data actually there,
    never with what a (possibly forged) header claims."""
    data = bytearray()
    while len(data) < nbytes:
        chunk = member.read(min(READ_CHUNK, nbytes - len(data)))
        if not chunk:
            raise WeightsError(f'entry "{key}" ends after {len(data):,} of its {nbytes:,} bytes (truncated?)', file=name)
        data += chunk
    return data


MAX_SAFETENSORS_HEADER = 100 * 2**20  # the reference reader's cap: a larger header is corrupt


def _read_safetensors(f: BinaryIO, name: str) -> dict[str, np.ndarray]:
    """The 8-byte header length, the JSON header, then the data: every entry is validated against
    the file's size before a byte of data is read."""
    def bad(why: str) -> WeightsError:
        return WeightsError(f"not a valid safetensors file: {why}", file=name)

    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise bad("shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
        raise bad("the header runs past the end of the file (truncated?)" if header_len > size - 8
                  else f"a {header_len:,}-byte header is over the {MAX_SAFETENSORS_HEADER:,}-byte limit")
    try:
        header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise bad(f"header is not JSON ({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_size, entries = size - 8 - header_len, []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise bad(f'entry "{key}" lacks dtype, shape or data_offsets') from None
        if not (isinstance(dtype, str) and all(_is_count(n) for n in (*shape, begin, end))):
            raise bad(f'entry "{key}" has a malformed dtype, shape or data_offsets')
        if dtype not in _ST_DTYPES and dtype != "BF16":
            raise bad(f'entry "{key}" has unsupported dtype {dtype}')
        if not 0 <= begin <= end <= data_size:
            raise bad(f'entry "{key}" points past the end of the data (truncated?)')
        itemsize = 2 if dtype == "BF16" else np.dtype(_ST_DTYPES[dtype]).itemsize
        if end - begin != itemsize * math.prod(shape):
            raise bad(f'entry "{key}" holds {end - begin} bytes, its shape {list(shape)} of {dtype} needs '
                      f"{itemsize * math.prod(shape)}")
        entries.append((key, dtype, shape, begin, end))
    data = memoryview(f.read(data_size))
    out = {}
    for key, dtype, shape, begin, end in entries:
        raw = data[begin:end]
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            value = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            value = np.frombuffer(raw, _ST_DTYPES[dtype])
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
