"""An example run once on CUDA at each precision, for `compute-sanitizer` (bench/gpu_check.sh):
resnet18 on 64x64 images, batch 2 (every kind of kernel its full size has: the stem, residual
epilogues, NHWC tensor-core convs at tf32, fp16 and bf16, a split-K linear layer, pools), small
enough for the sanitizer's slowdown. Exits non-zero when a result disagrees with the NumPy backend
(at reduced precisions a value summed in another order may round to the neighbouring value in the
next layer: looser bounds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import cnngraph

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "resnet18.json"
BOUNDS = {"fp32": 1e-5, "tf32": 2e-3, "fp16": 5e-3, "bf16": 3e-2}


def reduced_example() -> dict:
    spec = json.loads(EXAMPLE.read_text())
    spec["inputs"][0]["shape"] = [3, 64, 64]
    spec.pop("preprocess", None)  # it makes 224x224 images
    return spec


if __name__ == "__main__":
    spec = reduced_example()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    failed = False
    for precision, bound in BOUNDS.items():
        ref = cnngraph.compile(spec, batch_size=2, device="cpu", precision=precision)
        gpu = cnngraph.compile(spec, batch_size=2, device="cuda", weights=ref.weights, precision=precision,
                               cuda_graph=False)
        assert any("_split" in launch.kernel for launch in gpu.backend.program.launches)
        err = float(np.linalg.norm(gpu(x) - ref(x)) / np.linalg.norm(ref(x)))
        print(f"{precision}: relative error against NumPy {err:.2e}")
        failed |= not err <= bound
    sys.exit(1 if failed else 0)
