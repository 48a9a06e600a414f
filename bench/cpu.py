"""CPU benchmark: cnngraph's NumPy backend against PyTorch eager and ONNX Runtime, side by side.

    python bench/cpu.py [--repeats 15] [--cases resnet18:8,mobilenet_v2:8] [--profile resnet18:8]

All three run the same network with the same weights in one process, alternating in short
blocks (the first call of each block unmeasured), on the same number of threads. Prints medians and ratios (cnngraph time / other time: below 1 is
faster) and writes bench/results/cpu-<date>.json. `--profile` prints a per-node time breakdown.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the PyTorch oracle doubles as the PyTorch model

import cnngraph  # noqa: E402
from cnngraph.progress import progress_bar  # noqa: E402
from results_file import run_record, save  # noqa: E402

DEFAULT_CASES = ("lenet5:256,cifar_vgg:64,resnet18:1,resnet18:8,mobilenet_v2:8,"
                 "efficientnet_b0:2,mobilenet_v3_large:2,convnext_tiny:2,shufflenet_v2:2,densenet121:2")
BLOCK = 3  # calls in a row per runner before switching to the next


def torch_and_onnx(spec: dict, weights: dict, x: np.ndarray, threads: int):
    import onnxruntime as ort
    import torch
    from torch_oracle import TorchNet

    torch.set_num_threads(threads)
    net = TorchNet(spec, weights).eval()
    xt = torch.from_numpy(x)

    def run_torch():
        with torch.inference_mode():
            return net(xt)

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (xt,), buf, dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return run_torch, lambda: session.run(None, feed)


def bench_case(name: str, batch: int, repeats: int, threads: int) -> dict:
    spec_path = ROOT / "examples" / f"{name}.json"
    spec = json.loads(spec_path.read_text())
    model = cnngraph.compile(spec, batch_size=batch, device="cpu")
    x = np.random.default_rng(0).standard_normal(next(iter(model.input_shapes.values()))).astype(np.float32)
    run_torch, run_onnx = torch_and_onnx(spec, model.weights, x, threads)
    runners = {"cnngraph": lambda: model(x), "pytorch": run_torch, "onnxruntime": run_onnx}
    ref = run_torch().numpy()
    err = float(np.linalg.norm(model(x) - ref) / np.linalg.norm(ref))
    times = {k: [] for k in runners}
    for fn in runners.values():  # warm-up
        fn()
    for _ in range(-(-repeats // BLOCK)):
        for key, fn in runners.items():  # alternate so drift from the shared machine hits all alike
            fn()  # unmeasured: lets the previous runner's spinning worker threads go idle
            for _ in range(BLOCK):
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"network": name, "batch": batch, "median_ms": {k: v * 1e3 for k, v in med.items()},
            "ratio_vs_pytorch": med["cnngraph"] / med["pytorch"],
            "ratio_vs_onnxruntime": med["cnngraph"] / med["onnxruntime"],
            "images_per_s": {k: batch / v for k, v in med.items()}, "rel_err_vs_pytorch": err}


def profile(name: str, batch: int, repeats: int = 5) -> None:
    """Per-node time of the NumPy backend: where the time goes."""
    model = cnngraph.compile(ROOT / "examples" / f"{name}.json", batch_size=batch, device="cpu")
    g = model.graph
    x = np.random.default_rng(0).standard_normal(next(iter(model.input_shapes.values()))).astype(np.float32)
    model(x)  # warm-up: scratch buffers grow to size once
    totals: dict[str, float] = {}
    for _ in range(repeats):
        model.backend.run({g.graph["inputs"][0]: x}, timings=totals)
    whole = sum(totals.values())
    by_op: dict[str, float] = {}
    for node, t in totals.items():
        op = g.nodes[node]["op"]
        if g.nodes[node]["compute"].op == "conv2d":
            spec = g.nodes[node]["compute"].spec
            k = spec.kernel_size if isinstance(spec.kernel_size, int) else "x".join(map(str, spec.kernel_size))
            op = f"conv {k}x{k} {'depthwise' if spec.groups > 1 else 'dense'}" if isinstance(k, int) else f"conv {k}"
        by_op[op] = by_op.get(op, 0) + t
    print(f"\nprofile {name} batch {batch}: {whole / repeats * 1e3:.1f} ms per run")
    for op, t in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"  {op:28s} {t / repeats * 1e3:8.2f} ms  {100 * t / whole:5.1f}%")
    for node, t in sorted(totals.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  node {node:40s} {t / repeats * 1e3:8.2f} ms  {g.nodes[node]['op']}")


def _blas() -> list[dict]:
    """Which BLAS kernels NumPy ran (OPENBLAS_CORETYPE can change it), if threadpoolctl is here."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for i in threadpool_info()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=DEFAULT_CASES, help="network:batch,...")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--profile", help="network:batch to profile per node")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    if args.profile:
        name, batch = args.profile.split(":")
        profile(name, int(batch))
        return
    results = []
    cases = args.cases.split(",")
    with progress_bar(len(cases), "cases", "case") as bar:
        for case in cases:
            name, batch = case.split(":")
            results.append(bench_case(name, int(batch), args.repeats, args.threads))
            r = results[-1]
            bar.write(f"{name} b{batch}: cnngraph {r['median_ms']['cnngraph']:.1f} ms, "
                      f"pytorch {r['median_ms']['pytorch']:.1f} ms, onnxruntime {r['median_ms']['onnxruntime']:.1f} ms",
                      file=sys.stderr)
            bar.update(1)
    print(f"\n{'network':14s} {'batch':>5s} {'cnngraph ms':>12s} {'pytorch ms':>11s} {'ort ms':>9s} "
          f"{'vs pytorch':>10s} {'vs ort':>7s} {'rel err':>8s}")
    for r in results:
        m = r["median_ms"]
        print(f"{r['network']:14s} {r['batch']:5d} {m['cnngraph']:12.2f} {m['pytorch']:11.2f} "
              f"{m['onnxruntime']:9.2f} {r['ratio_vs_pytorch']:10.2f} {r['ratio_vs_onnxruntime']:7.2f} "
              f"{r['rel_err_vs_pytorch']:8.1e}")
    print("ratio = cnngraph median / other median (below 1: cnngraph is faster)")
    record = run_record(threads=args.threads, repeats=args.repeats, numpy=np.__version__, blas=_blas(),
                        env={k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ},
                        results=results)
    if not args.no_save:
        save(record, "cpu")


if __name__ == "__main__":
    main()
