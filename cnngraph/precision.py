"""Numeric precision of a compiled network.

`fp32` (the default): every tensor stored and every product and sum computed in float32, on the
CUDA cores.
`tf32`: the convolutions and linear layers that run as a GEMM (all but depthwise) multiply operands
rounded to TF32 (a 10-bit mantissa, to nearest with ties away from zero, as `cvt.rna.tf32.f32`
does) on the tensor cores, and accumulate in float32; storage and every other op stay float32,
except that a conv or linear layer whose output only tensor-core convs read (as their ungated
input) stores it rounded to TF32: the values those convs would round it to anyway, rounded once by
their writer instead of in every block that reads them (`passes/assign_precision.py`).
`fp16` / `bf16`: every activation (the arena: inputs, layer outputs) and the GEMM weights are
stored in 16 bits (half the memory traffic), rounded to nearest even when stored; kernels load
them into float32, compute and accumulate in float32 (epilogues included) and round once, at the
store. Per-channel constants (bias, batch-norm scale and shift, layer-norm affine) and the split-K
workspace stay float32. Inputs are rounded on the way in; outputs come back as float32. A gated
conv's x * gate (a squeeze-excitation mul fused into the conv) is rounded to 16 bits, as the mul
would have stored it: it is an operand of the 16-bit tensor-core products.

The CPU backends round the same values the same way (`round_tf32`, `round_storage`), so every
device gives the accuracy a GPU gives. Reduced precisions need compute capability 8.0 (Ampere) or
newer on CUDA (TF32 and BF16 tensor cores).
"""

from __future__ import annotations

import numpy as np

from .errors import SpecError, quote

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
HALF_STORAGE = ("fp16", "bf16")  # precisions whose tensors are stored in 16 bits
TENSOR_CORE_ARCH = {"tf32": (8, 0), "fp16": (8, 0), "bf16": (8, 0)}  # the oldest compute capability


def check_precision(precision) -> str:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise SpecError(f"unknown precision {quote(precision)}; valid: {', '.join(PRECISIONS)}")
    return precision


def element_bytes(precision: str) -> int:
    """Bytes of one stored activation element on a GPU (and in the OpenCL arena)."""
    return 2 if precision in HALF_STORAGE else 4


def vector_width(precision: str) -> int:
    """Stored elements per 16 bytes: what one 16-byte copy or load moves (4 float32, 8 16-bit)."""
    return 16 // element_bytes(precision)


def copy_width(channels: int, precision: str) -> int:
    """Stored elements one cp.async copies of an NHWC pixel's `channels`: a whole 16-byte vector
    where they are whole vectors, else the widest 8- or 4-byte copy that divides them (shufflenet's
    58 channels: two at a time); 0 where none does (an odd count of 16-bit values: cp.async moves
    4 bytes at least)."""
    width = vector_width(precision)
    while width * element_bytes(precision) >= 4:
        if channels % width == 0:
            return width
        width //= 2
    return 0


def round_tf32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 `x` rounded to TF32 as the GPU's cvt.rna does: add half of the 13 dropped bits to
    the magnitude (ties away from zero), then clear them; NaN and infinity are left alone.
    Into `out` (same shape, float32, contiguous; `x` itself rounds it in place) when given;
    temporaries: one byte per element."""
    x = np.ascontiguousarray(x, np.float32)
    finite = np.isfinite(x)
    out = np.empty_like(x) if out is None else out
    np.copyto(out, x)  # nothing to do in place
    rounded = out.view(np.uint32)
    np.add(rounded, np.uint32(0x1000), out=rounded, where=finite)
    np.bitwise_and(rounded, np.uint32(0xFFFFE000), out=rounded, where=finite)
    return out


def to_storage(x, precision: str, xp=np):
    """The 16-bit patterns (uint16) of float32 `x` rounded to `precision` ("fp16" or "bf16") to
    nearest even, as the kernels store them; `xp` is numpy or cupy (the same code runs on either).
    fp16: IEEE binary16, subnormals kept, beyond 65504 infinity. bf16: the high half of the float32
    rounded; NaN stays NaN (its quiet bit set, so rounding cannot carry it to infinity)."""
    x = xp.ascontiguousarray(x, dtype=xp.float32)
    if precision == "fp16":
        with np.errstate(over="ignore"):  # beyond 65504 is infinity, as on the GPU
            return x.astype(xp.float16).view(xp.uint16)
    bits = x.view(xp.uint32)
    rounded = (bits + xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1))) >> 16
    nan = (bits >> 16) | xp.uint32(0x40)
    return xp.where(xp.isnan(x), nan, rounded).astype(xp.uint16)


def from_storage(bits, precision: str, xp=np):
    """float32 values of 16-bit patterns (the inverse of `to_storage`, exact)."""
    if precision == "fp16":
        return bits.view(xp.float16).astype(xp.float32)
    return (bits.astype(xp.uint32) << 16).view(xp.float32)


def round_storage(x: np.ndarray, precision: str) -> None:
    """Round float32 `x` in place to the values `precision` stores (the NumPy backend's emulation
    of the GPU's 16-bit arena); fp32 and tf32 store float32: nothing to do."""
    if precision in HALF_STORAGE:
        x[...] = from_storage(to_storage(x, precision), precision)
