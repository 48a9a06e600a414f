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
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

import networkx as nx
import numpy as np

from .errors import CnnGraphError, CnnGraphWarning, InputError, SpecError, WeightsError, quote, shorten
from .files import atomic_write, given_path
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
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SpecError(f"seed must be a non-negative integer, got {shorten(repr(seed))}")
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
    check_keys(weights, expected, file)
    checked, converted = {}, {}
    for key, value in weights.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        value = np.asarray(value)
        value = value.reshape(check_declared(key, value.shape, value.dtype, expected, file))
        layer = expected[key][1]
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


def check_keys(keys, expected, file: str | None = None) -> None:
    """Every key the network needs is among `keys` (a list or dict), and every other key is one it ignores."""
    present = set(keys)
    for key, (shape, layer) in expected.items():
        if key not in present:
            raise WeightsError(f'missing key "{key}" (expected shape {shape})', layer=layer, file=file)
    for key in keys:
        if key not in expected and not key.endswith(IGNORED_SUFFIXES):
            layer_keys = sorted(k for k in expected if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])
            hint = f"; that layer has {', '.join(layer_keys)}" if layer_keys else "; no layer of that name has weights"
            raise WeightsError(f'unexpected key "{key}"{hint}', file=file)


def check_declared(key: str, shape: tuple[int, ...], dtype: np.dtype, expected, file: str | None = None):
    """The shape to give the array of a key the network uses, declared with `shape` and `dtype` (by an
    array, or by a file's header before its data is read), or a WeightsError."""
    want, layer = expected[key]
    if dtype.kind != "f":
        raise WeightsError(f'key "{key}" has dtype {dtype}; weights must be floating point', layer=layer, file=file)
    if shape != want and want[:len(shape)] == shape and all(d == 1 for d in want[len(shape):]):
        return want  # trailing 1s omitted: nn.Linear's (K, C) weight in a 1x1 conv2d
    if shape != want:
        raise WeightsError(f'key "{key}" has shape {shape}, expected {want}', layer=layer, file=file)
    return want


def as_arrays(weights: object, what: str = "weights") -> dict[str, np.ndarray]:
    """A mapping a caller gave (a dict of arrays, a PyTorch state_dict) as NumPy arrays by string key,
    or a WeightsError naming the first key that is not a string or whose value is not numbers."""
    if not isinstance(weights, Mapping):
        raise WeightsError(f"{what} must be a mapping (a dict of arrays by key), got {type(weights).__name__}")
    arrays = {}
    for key, value in weights.items():
        if not isinstance(key, str):
            raise WeightsError(f"{what} keys must be strings (PyTorch's state_dict keys), got {shorten(repr(key))}")
        arrays[key] = _as_array(key, value)
    return arrays


def _as_array(key: str, value) -> np.ndarray:
    """A torch tensor (recognised by `.detach()`: any device, any float dtype, a parameter that requires
    grad) or anything NumPy reads as numbers. An object array (a ragged list, None) is refused: it
    would be pickled into a file, and no kernel can compute with it."""
    try:
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if value.is_floating_point() and value.element_size() < 4:
                value = value.float()  # bfloat16 has no NumPy dtype; widening it (and half) is exact
            return value.numpy()
        array = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as err:  # NumPy's for ragged lists, torch's for odd tensors
        raise WeightsError(f'key "{key}" is not an array of numbers: {shorten(str(err), 160)}') from None
    if array.dtype.hasobject:
        raise WeightsError(f'key "{key}" holds Python objects, not numbers; cnngraph never pickles, give numeric '
                           f"arrays")
    return array


# --- files -------------------------------------------------------------------------------------

def load_weights(source: str | Path | Mapping[str, np.ndarray], expected=None) -> dict[str, np.ndarray]:
    """Arrays by key from a `.npz` or `.safetensors` file, or a dict given as is. Every header is
    checked against the file's size before any data is read, and nothing is ever unpickled.
    With `expected` (a network's keys and shapes, from `expected_shapes`), the file's keys are
    compared with the network's before any data is read, each entry's shape and dtype before its
    data, and keys the network ignores are never read: an unused entry costs nothing."""
    if isinstance(source, Mapping):
        return as_arrays(source)
    path = given_path(source, "weights must be a file path or a dict of arrays", WeightsError)
    if path.suffix not in (".npz", ".safetensors"):
        raise WeightsError("unknown weights format; use a .npz or .safetensors file", file=str(path))
    return read_arrays(path, expected=expected)


def read_arrays(path: Path, what: str = "weights", expected=None,
                on_keys: Callable[[list[str]], None] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a `.npz` or `.safetensors` file (by its suffix), read as `load_weights` reads
    them. `on_keys(keys)` is called with the file's keys before any data is read, and may raise (an
    input file's names are checked so). Every failure is a CnnGraphError naming the file; one this
    reader cannot say more of is "cannot read <what>: ...". """
    try:
        with open(path, "rb") as f:
            read = _read_npz if path.suffix.lower() == ".npz" else _read_safetensors
            return read(f, str(path), expected, on_keys)
    except CnnGraphError:  # its own reason, whatever the type: never the generic one below
        raise
    except Exception as err:  # zipfile alone raises a dozen types (BadZipFile, RuntimeError, NotImplementedError, ...)
        why = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise WeightsError(f"cannot read {what}: {why}", file=str(path)) from None


def save_weights(weights: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write `.npz` or `.safetensors` (chosen by the suffix) through a temporary file and a rename,
    so a crash never leaves a half-written file."""
    path = given_path(path, "the weights file must be a path", WeightsError)
    arrays = {key: np.asarray(value, order="C") for key, value in as_arrays(weights).items()}  # 0-d stays 0-d
    if path.suffix == ".npz":
        write = lambda f: np.savez(f, **arrays)  # noqa: E731
    elif path.suffix == ".safetensors":
        write = lambda f: f.write(_safetensors_bytes(arrays))  # noqa: E731
    else:
        raise WeightsError("unknown weights format; use a .npz or .safetensors file", file=str(path))
    atomic_write(path, write)


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
NPY_MAGIC = b"\x93NUMPY"


def read_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    """An input array from a `.npy` file, or an InputError naming the file and why. The header is
    checked before the data is read (memory-mapped with `mmap`), so a file that is no .npy, or that
    claims more than it holds, is refused, not allocated; an object array is never unpickled."""
    try:
        with open(path, "rb") as f:
            _check_npy_header(f)
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"cannot read a .npy array: {getattr(err, 'strerror', None) or err}", file=str(path)) from None


def _check_npy_header(f) -> None:
    """A ValueError saying why `f` is not a .npy array cnngraph can read: not the format at all (NumPy
    would advise unpickling it), Python objects, a negative dimension, or more data than the file holds."""
    if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
        raise ValueError("not a .npy file (it does not begin as np.save writes one); give a .npy array, or a .npz "
                         "with one array per input name")
    f.seek(0)
    read_header = NPY_HEADER_READERS.get(np.lib.format.read_magic(f))
    if read_header is None:
        raise ValueError("unsupported .npy format version")
    shape, _, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError("it holds Python objects, which cnngraph never unpickles; save a float32 array")
    if any(n < 0 for n in shape):
        raise ValueError(f"its header declares shape {shape}, with a negative dimension (corrupt file?)")
    declared, held = dtype.itemsize * math.prod(shape), os.fstat(f.fileno()).st_size - f.tell()
    if declared > held:
        raise ValueError(f"its header declares shape {shape} ({declared:,} bytes) but the file holds {held:,} "
                         f"(truncated?)")


def _read_npz(f: BinaryIO, name: str, expected=None, on_keys=None) -> dict[str, np.ndarray]:
    """A zip of .npy arrays (what np.savez writes). The archive's directory is checked first (every
    entry a name and bytes of its own), then its keys (with `expected`), then each member's header:
    object arrays (pickles) are refused, and a shape the member's size cannot hold is never allocated."""
    if not zipfile.is_zipfile(f):
        f.seek(0)
        if f.read(4) == ZIP_MAGIC:  # begins as a zip does, but its directory (at the end) is missing
            raise WeightsError("not a .npz file it can read: a zip archive cut short or corrupt, without its "
                               "directory at the end (truncated?)", file=name)
        raise WeightsError("not a .npz file (a zip archive of .npy arrays)", file=name)
    file_size, out = os.fstat(f.fileno()).st_size, {}
    with zipfile.ZipFile(f) as archive:
        infos = archive.infolist()
        _check_members_apart(infos, archive.start_dir, name)
        keys = [info.filename.removesuffix(".npy") for info in infos]
        wanted = _keys_to_read(keys, expected, name, on_keys)
        for key, info in zip(keys, infos):
            if key not in wanted:
                continue
            with _corrupt_entry(key, name), archive.open(info) as member:
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
                if expected is not None:
                    check_declared(key, shape, dtype, expected, name)
                nbytes = dtype.itemsize * math.prod(shape)
                can_hold = min(info.file_size, MAX_DEFLATE_RATIO * info.compress_size) - member.tell()
                if nbytes > can_hold or info.compress_size > file_size:
                    raise WeightsError(f'entry "{key}" declares shape {shape} ({nbytes:,} bytes), more than it can '
                                       f"hold (truncated or corrupt?)", file=name)
                value = np.frombuffer(_read_exactly(member, nbytes, key, name), dtype)
                out[key] = value.reshape(shape, order="F" if fortran else "C")
    return out


def _keys_to_read(keys: list[str], expected, file: str, on_keys=None) -> set[str]:
    """Every key of a file; or, given the network's `expected` keys, the ones it uses, once all
    have been compared with the network's. `on_keys(keys)` is called first, before any data is read."""
    if on_keys is not None:
        on_keys(keys)
    if expected is None:
        return set(keys)
    check_keys(keys, expected, file)
    return {key for key in keys if not key.endswith(IGNORED_SUFFIXES)}


ZIP_LOCAL_HEADER = 30  # bytes before an entry's name, extra field and data
ZIP_MAGIC = b"PK\x03\x04"  # how a zip archive's first entry begins


@contextmanager
def _corrupt_entry(key: str, name: str):
    """A damaged entry's data (a CRC-32 that does not match, a broken deflate stream) as a
    WeightsError naming the entry, not the generic "cannot read"."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise WeightsError(f'entry "{key}" is corrupt: {shorten(str(err) or type(err).__name__, 160)}',
                           file=name) from None


def _check_members_apart(infos: list[zipfile.ZipInfo], directory_start: int, name: str) -> None:
    """Every entry of the archive has a name and bytes of its own, before the central directory.
    Duplicated or overlapping records (a zip bomb's way to make one compressed blob decompress
    many times) are refused in one pass over the entries in file order."""
    seen = set()
    for info in infos:
        if info.filename in seen:
            raise WeightsError(f'entry "{info.filename}" appears twice in the archive (corrupt or forged?)', file=name)
        seen.add(info.filename)
    spans = sorted((info.header_offset, info.header_offset + ZIP_LOCAL_HEADER + info.compress_size, info.filename)
                   for info in infos)  # each entry's bytes, at least
    for (_, end, entry), (next_start, _, next_entry) in zip(spans, [*spans[1:], (directory_start, 0, None)]):
        if end > next_start:
            other = f'entry "{next_entry}"' if next_entry is not None else "the archive's directory"
            raise WeightsError(f'entry "{entry}" overlaps {other} (corrupt or forged?)', file=name)


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


def _read_safetensors(f: BinaryIO, name: str, expected=None, on_keys=None) -> dict[str, np.ndarray]:
    """The 8-byte header length, the JSON header, then the data: every entry is validated against
    the file's size and the others (with `expected`, against the network's keys too) before a byte
    of data is read, and then only the entries wanted are read."""
    def bad(why: str) -> WeightsError:
        return WeightsError(f"not a valid safetensors file: {why}", file=name)

    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise bad("shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
        raise bad("the header runs past the end of the file (truncated?)" if header_len > size - 8
                  else f"a {header_len:,}-byte header is over the {MAX_SAFETENSORS_HEADER:,}-byte limit")
    def no_key_twice(pairs: list[tuple[str, object]]) -> dict:
        """JSON's last-wins rule would silently drop an entry (or an entry's field) given twice."""
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise bad(f"key {quote(key)} appears twice in the header (corrupt or forged?)")
            seen[key] = value
        return seen

    try:
        header = json.loads(f.read(header_len), object_pairs_hook=no_key_twice)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise bad(f"header is not JSON ({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_size, entries = size - 8 - header_len, []
    for key, info in header.items():
        if key == "__metadata__":  # free text: an object of strings, as the reference writer makes it
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise bad("__metadata__ must be a JSON object of strings")
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise bad(f'entry "{key}" lacks dtype, shape or data_offsets') from None
        if not (isinstance(dtype, str) and all(_is_count(n) for n in (*shape, begin, end))):
            raise bad(f'entry "{key}" has a malformed dtype, shape or data_offsets')
        if dtype not in _ST_DTYPES and dtype != "BF16":
            raise bad(f'entry "{key}" has unsupported dtype {dtype}')
        if begin > end:
            raise bad(f'entry "{key}" has data_offsets [{begin}, {end}] that run backwards')
        if end > data_size:
            raise bad(f'entry "{key}" points past the end of the data (truncated?)')
        itemsize = 2 if dtype == "BF16" else np.dtype(_ST_DTYPES[dtype]).itemsize
        if end - begin != itemsize * math.prod(shape):
            raise bad(f'entry "{key}" holds {end - begin} bytes, its shape {list(shape)} of {dtype} needs '
                      f"{itemsize * math.prod(shape)}")
        entries.append((begin, end, key, dtype, shape))
    entries.sort()
    _check_back_to_back(entries, data_size, bad)
    wanted = _keys_to_read([key for _, _, key, _, _ in entries], expected, name, on_keys)
    if expected is not None:
        for _, _, key, dtype, shape in entries:
            if key in wanted:
                as_read = np.dtype(_ST_DTYPES.get(dtype, "<f4"))  # BF16 is read as float32
                check_declared(key, shape, as_read, expected, name)
    out = {}
    for begin, end, key, dtype, shape in entries:
        if key in wanted:
            f.seek(8 + header_len + begin)
            raw = bytearray(end - begin)
            if f.readinto(raw) != len(raw):
                raise bad(f'entry "{key}" ends early (the file changed while read?)')
            if dtype == "BF16":  # bfloat16 is the top half of a float32
                value = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                value = np.frombuffer(raw, _ST_DTYPES[dtype])
            out[key] = value.reshape(shape)
    return out


def _check_back_to_back(entries: list[tuple], data_size: int, bad) -> None:
    """The reference reader's rule: the data is the entries (sorted by offset) back to back, no
    gap, no overlap, no byte left over. So no two keys share bytes, and what is read is at most
    the file: a 4 MB file cannot declare 8 GB of tensors."""
    for (_, end, key, *_), (begin, _, next_key, *_) in zip(entries, entries[1:]):
        if end != begin:
            raise bad(f'entries "{key}" and "{next_key}" {"overlap" if end > begin else "leave a gap between them"}')
    if ((entries[0][0], entries[-1][1]) if entries else (0, 0)) != (0, data_size):
        raise bad(f"the entries do not cover the {data_size:,} bytes of data exactly")


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
