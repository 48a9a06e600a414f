"""Kernel templates in the neutral C subset of `dialects.py`, one module per family, specialised per
compiled shape: every size, stride and loop bound is a literal, so the compiler folds index
arithmetic and unrolls. Each template returns (body, grid, block).

  gemm           implicit-GEMM convolution (and linear), split-K reduction, depthwise convolution
  elementwise    one thread per element computing an expression (activations, adds, batch norm)
  reductions     windowed pooling; reductions along an axis (global average pool, softmax)
  data_movement  concatenation, nearest upsampling
"""

from .common import THREADS
from .data_movement import concat, upsample_nearest
from .elementwise import pointwise
from .gemm import FusedPool, conv_gemm, depthwise, split_reduce
from .reductions import pool, reduce_rows

__all__ = ["THREADS", "concat", "upsample_nearest", "pointwise", "FusedPool", "conv_gemm", "depthwise",
           "split_reduce", "pool", "reduce_rows"]
