"""ONNX external data, read without trusting the file that points to it.

A tensor may keep its bytes in another file (`location`, `offset`, `length`): models over 2 GB
must. The onnx library resolves some of these against the process's working directory and gives up
with a traceback on others, so cnngraph reads them itself. A location is resolved against the model
file's folder only, and must stay inside that folder once `..` and symlinks are resolved; it must be
a regular file (not a FIFO that would block, nor a device that never ends), and the bytes asked for
must lie within its real size. Anything else is one SpecError naming the tensor.

Every tensor of the model is covered: initializers, sparse initializers, and the tensor attributes
of every node (Constant values included), in subgraphs and functions too. Each is rewritten to hold
its bytes inline, so nothing later can resolve a location again.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

from ..errors import SpecError, quote, shorten

MAX_READ = 1 << 30  # bytes asked of the kernel per read (Linux returns at most ~2 GiB at once)


def inline_external_data(model, file: str) -> None:
    """Replace every external tensor of `model` (read from `file`) by one that holds its bytes."""
    from onnx import TensorProto

    folder = Path(file).parent.resolve()
    for tensor in model_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            tensor.raw_data = read_external(tensor, folder, file)
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT


def model_tensors(model) -> Iterator:
    """Every TensorProto of the model: its graph's, and those of its functions' nodes."""
    yield from graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from node_tensors(node)


def graph_tensors(graph) -> Iterator:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from node_tensors(node)


def node_tensors(node) -> Iterator:
    """The tensors in a node's attributes, and in the graphs its attributes hold (If, Loop, Scan)."""
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        sparse_tensors = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
        for sparse in [*sparse_tensors, *attr.sparse_tensors]:
            yield from (sparse.values, sparse.indices)
        for graph in [attr.g] if attr.HasField("g") else []:
            yield from graph_tensors(graph)
        for graph in attr.graphs:
            yield from graph_tensors(graph)


def read_external(tensor, folder: Path, file: str) -> bytes:
    """The bytes an external tensor points to, from a regular file inside `folder`."""
    def refused(why: str) -> SpecError:
        return SpecError(f"tensor {quote(tensor.name)}: external data {why}", file=file)

    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if not location:
        raise refused("names no location")
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise refused(f"has an offset or length that is not a whole number "
                      f"({shorten(info.get('offset'))}, {shorten(info.get('length'))})") from None
    if offset < 0 or (length is not None and length < 0):
        raise refused(f"has a negative offset or length ({offset}, {length})")
    try:
        resolved = (folder / location).resolve(strict=True)
    except (OSError, RuntimeError, ValueError) as err:  # missing, a symlink loop, a NUL in the name
        raise refused(f"file {quote(location)} cannot be read beside the model: "
                      f"{getattr(err, 'strerror', None) or err}") from None
    if not resolved.is_relative_to(folder):
        raise refused(f"file {quote(location)} is outside the model's folder {shorten(folder)}; "
                      f"external data must lie in the model's folder or below it")
    try:
        # O_NOFOLLOW: the path was resolved, so a symlink here was swapped in since; O_NONBLOCK: a FIFO
        # would block the open before fstat could refuse it
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise refused(f"file {quote(location)} cannot be read: {err.strerror or err}") from None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise refused(f"file {quote(location)} is not a regular file")
        end = found.st_size if length is None else offset + length
        if offset > found.st_size or end > found.st_size:
            raise refused(f"asks for bytes {offset:,} to {end:,} of {quote(location)}, "
                          f"which holds {found.st_size:,} (truncated file?)")
        return read_range(fd, offset, end - offset, refused)
    finally:
        os.close(fd)


def read_range(fd: int, offset: int, count: int, refused) -> bytes:
    """`count` bytes at `offset`; a file that shrinks meanwhile is refused, not padded."""
    chunks = []
    while count:
        chunk = os.pread(fd, min(count, MAX_READ), offset)
        if not chunk:
            raise refused("file ended early (changed while being read?)")
        chunks.append(chunk)
        offset, count = offset + len(chunk), count - len(chunk)
    return b"".join(chunks)
