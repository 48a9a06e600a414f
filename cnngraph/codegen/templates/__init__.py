"""Kernel templates in the neutral C subset of `dialects.py`, one module per family, specialised per
compiled shape: every size, stride and loop bound is a literal, so the compiler folds index
arithmetic and unrolls. Each template returns (body, grid, block).

  gemm           implicit-GEMM convolution (and linear), split-K reduction, depthwise convolution
  elementwise    one thread per element computing an expression (activations, adds, batch norm)
  reductions     windowed pooling; reductions along an axis (global average pool, softmax, layer norm)
  data_movement  concatenation, channel slices and shuffles, padding, upsampling
"""

from .common import MAX_KERNEL_INPUTS, THREADS, kernel_groups
from .data_movement import channel_gather, concat, pad2d, resample, upsample_nearest
from .elementwise import pointwise
from .gemm import (FusedPool, conv_gemm, conv_mma, conv_mma16, conv_mma_weights, depthwise, gemm_rows, tap_table,
                   weight_vector)
from .reductions import layer_norm, layer_norm_warps, pool, reduce_rows

__all__ = ["MAX_KERNEL_INPUTS", "THREADS", "kernel_groups", "channel_gather", "concat", "pad2d", "resample",
           "upsample_nearest", "pointwise", "FusedPool", "conv_gemm", "conv_mma", "conv_mma16", "conv_mma_weights",
           "depthwise", "gemm_rows", "tap_table", "weight_vector",
           "layer_norm", "layer_norm_warps", "pool", "reduce_rows"]
