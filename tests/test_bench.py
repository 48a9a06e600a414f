"""The benchmarks' own code, run on the CPU: a GPU is lent rarely, and a benchmark that breaks on
one wastes it (bench/gpu.py's `bench_case` takes `device="cpu"` for this)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from test_backends import NVRTC_REASON

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

PRECISIONS = ["fp32", "tf32", "fp16", "bf16"]


def test_gpu_benchmark_runs_every_step_on_the_cpu():
    """Every measurement of a case (cnngraph at each precision, PyTorch's variants, the per-kernel
    times), and the table printed from them."""
    pytest.importorskip("torch")
    import gpu

    result = gpu.bench_case("lenet5", 2, 1, "cpu", PRECISIONS, tune=False, device="cpu")
    for precision in PRECISIONS[1:]:
        assert result[f"rel_err_{precision}_vs_pytorch_fp32"] < 3e-2
        assert result[f"cnngraph_{precision}_ms"] > 0
    for torch_run in ("fp32", "fp32_channels_last", "tf32", "tf32_channels_last", "fp16_channels_last",
                      "bf16_channels_last"):
        assert result[f"pytorch_{torch_run}_ms"] > 0
    kernels = result["fp32_kernels"]["all"]
    assert [k["kernel"] for k in kernels] == ["s4", "s2", "f5", "f6", "logits"]  # convs and linears, by FLOPs
    assert result["fp32_kernels"]["top"] == kernels[:3] and all(k["ms"] > 0 for k in kernels)
    lines = gpu.table("cpu", [result])
    assert lines[2].split()[:2] == ["lenet5", "2"] and "fp16" in lines[3] and "PyTorch NHWC fp32" in lines[4]


@pytest.mark.skipif(NVRTC_REASON is not None, reason=str(NVRTC_REASON))
def test_sass_loop_profile_counts_the_main_loops():
    """bench/sass_loops.py: each tensor-core kernel's main loop, its products and the instructions
    they cost; the fp32 kernel's loop (two shared buffers) has one barrier too."""
    import sass_loops

    fp32 = sass_loops.measure("lenet5", 4, "fp32", "sm_80")
    assert len(fp32) == 5 and all(r["barriers"] == 1 and r["opcodes"]["FFMA"] * 32 == r["multiply_adds"] for r in fp32)

    rows = sass_loops.measure("lenet5", 4, "tf32", "sm_80")
    assert [r["kernel"].split("_")[0] for r in rows] == ["conv5x5s1", "conv5x5s1", "linear", "linear", "linear"]
    for r in rows:
        assert r["opcodes"]["HMMA.1688.F32.TF32"] * 1024 == r["multiply_adds"]
        assert r["instructions"] == sum(r["opcodes"].values()) and r["barriers"] == 1  # one per slice
        assert r["per_unit"] == round(r["instructions"] * 1024 / r["multiply_adds"], 2)
