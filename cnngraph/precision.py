"""Numeric precision of a compiled network's matrix products.

`fp32` (the default): every product and sum in float32, on the CUDA cores.
`tf32`: the convolutions and linear layers that run as a GEMM (all but depthwise) multiply operands
rounded to TF32 (a 10-bit mantissa, to nearest with ties away from zero, as `cvt.rna.tf32.f32`
does) on the tensor cores, and accumulate in float32; storage and every other op stay float32.

The CPU backends round the same operands the same way (`round_tf32`), so every device gives the
accuracy a GPU gives. Tensor cores need compute capability 8.0 (Ampere) or newer.
"""

from __future__ import annotations

import numpy as np

from .errors import SpecError, quote

PRECISIONS = ("fp32", "tf32")
TENSOR_CORE_ARCH = {"tf32": (8, 0)}  # precision -> the oldest compute capability that runs it


def check_precision(precision) -> str:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise SpecError(f"unknown precision {quote(precision)}; valid: {', '.join(PRECISIONS)}")
    return precision


def round_tf32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 `x` rounded to TF32 as the GPU's cvt.rna does: add half of the 13 dropped bits to
    the magnitude (ties away from zero), then clear them; NaN and infinity are left alone.
    Into `out` (same shape, float32, contiguous) when given; temporaries: one byte per element."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x) if out is None else out
    bits, rounded = x.view(np.uint32), out.view(np.uint32)
    np.add(bits, np.uint32(0x1000), out=rounded)
    np.bitwise_and(rounded, np.uint32(0xFFFFE000), out=rounded)
    np.copyto(rounded, bits, where=np.isinf(x) | np.isnan(x))
    return out
