"""One small network run once on CUDA at each precision, for `compute-sanitizer` (bench/gpu_check.sh):
a conv with padding, a split-K conv, a residual epilogue and a linear layer, all tensor-core kernels
at tf32, fp16 and bf16. Exits non-zero when a result disagrees with the NumPy backend (at reduced
precisions a value summed in another order may round to the neighbouring value in the next layer:
looser bounds)."""

from __future__ import annotations

import sys

import numpy as np

import cnngraph

SPEC = {"format_version": 1, "name": "sanitize", "inputs": [{"name": "x", "shape": [16, 12, 12]}], "layers": [
    {"op": "conv2d", "name": "a", "out_channels": 32, "kernel_size": 3, "padding": 1, "activation": "relu"},
    {"op": "conv2d", "name": "b", "out_channels": 32, "kernel_size": 3, "padding": 1},
    {"op": "add", "inputs": ["a", "b"]},
    {"op": "conv2d", "out_channels": 64, "kernel_size": 3, "stride": 2, "padding": 1},
    {"op": "global_avg_pool2d"}, {"op": "flatten"}, {"op": "linear", "out_features": 10}]}

if __name__ == "__main__":
    x = np.random.default_rng(0).standard_normal((2, 16, 12, 12)).astype(np.float32)
    failed = False
    for precision, bound in (("fp32", 1e-5), ("tf32", 1e-3), ("fp16", 2e-3), ("bf16", 1e-2)):
        ref = cnngraph.compile(SPEC, batch_size=2, device="cpu", precision=precision)
        gpu = cnngraph.compile(SPEC, batch_size=2, device="cuda", weights=ref.weights, precision=precision,
                               cuda_graph=False)
        err = float(np.linalg.norm(gpu(x) - ref(x)) / np.linalg.norm(ref(x)))
        print(f"{precision}: relative error against NumPy {err:.2e}")
        failed |= not err <= bound
    sys.exit(1 if failed else 0)
