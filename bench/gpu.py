"""GPU benchmark: cnngraph's CUDA backend against PyTorch eager (cuDNN) on the same GPU.

    python bench/gpu.py [--repeats 50] [--cases resnet18:64,...] [--no-tune] [--out DIR]

For each case: median latency by CUDA events for cnngraph (CUDA graph on) at each precision
(fp32, tf32, fp16, bf16), PyTorch FP32 with TF32 off (NCHW and channels_last), PyTorch with TF32
allowed (NCHW and channels_last), PyTorch FP16 and BF16 (channels_last) and torch.compile (default
mode, FP32, TF32 off; timed where its compile took under a minute); images/s and ratios; the
relative error against PyTorch FP32; every conv and linear kernel's time and TFLOP/s against the
card's peak at that precision (`cnngraph.profile`); and batch-1 latency with and without the
CUDA graph. Prints a table last and writes bench/results/gpu-<date>-<card>.json (and a copy into
--out, if given). `bench_case(..., device="cpu")` runs the same steps on the CPU (the tests'
smoke check: no GPU numbers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import cnngraph  # noqa: E402
from cnngraph.profile import gpu_peaks, profile  # noqa: E402
from cnngraph.progress import progress_bar  # noqa: E402

CASES = [("resnet18", 64), ("resnet18", 1), ("mobilenet_v2", 64), ("cifar_vgg", 256), ("resnet50", 64),
         ("resnet18", 256)]  # the most telling first: --budget may stop before the last
TUNED = {("resnet18", 1), ("resnet18", 64), ("cifar_vgg", 256)}  # also measured with autotune=True
COMPILED = {("resnet18", 64), ("mobilenet_v2", 64)}  # also PyTorch under torch.compile (a minute each to compile)
COMPILE_LIMIT_S = 60  # torch.compile is timed where it compiles within a minute
PEAK_TFLOPS = ("fp32", "tf32", "fp16", "bf16")  # the precisions whose peaks cnngraph.profile knows
TUNED_PRECISIONS = ("fp32", "tf32", "fp16")  # autotuned too in the TUNED cases (bf16 runs fp16's kernels)


def peak_for(card: str, precision: str = "fp32") -> float | None:
    peaks = gpu_peaks(card)
    return peaks[precision] if peaks else None


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """Relative L2 error of `got` against `ref`."""
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def channels_last(t):
    """A 4-D torch tensor in channels_last memory order; others as they are."""
    import torch

    return t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t


def wall_ms(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall-clock ms of `fn` on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def time_ms(fn, repeats: int, warmup: int = 5) -> float:
    import cupy as cp

    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def kernel_times(model, x: np.ndarray, repeats: int) -> list[dict]:
    """The conv and linear kernels' median times (`cnngraph.profile`: each launch between CUDA
    events on the model's stream), largest FLOP counts first."""
    times = profile(model, {name: x for name in model.input_shapes}, repeats)
    return sorted(({"kernel": t.kernel, "gflop": t.flops / 1e9, "ms": t.ms, "tflops": t.gflops / 1e3}
                   for t in times if t.op.split("+")[0] in ("conv2d", "linear") and t.flops),
                  key=lambda r: -r["gflop"])


def bench_case(name: str, batch: int, repeats: int, card: str, precisions: list[str], tune: bool,
               device: str = "cuda") -> dict:
    import torch
    from torch_oracle import TorchNet

    timer = time_ms if device == "cuda" else wall_ms
    spec = json.loads((ROOT / "examples" / f"{name}.json").read_text())
    model = cnngraph.compile(spec, batch_size=batch, device=device)
    shape = next(iter(model.input_shapes.values()))
    x_np = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x_dev = x_np
    if device == "cuda":  # inputs already on the GPU
        import cupy as cp
        x_dev = cp.asarray(x_np)
    net = TorchNet(spec, model.weights).eval()
    net.tensors = {k: v.to(device) for k, v in net.tensors.items()}
    x_t = torch.from_numpy(x_np).to(device)

    def run_torch():
        with torch.inference_mode():
            return net(x_t)

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ref = run_torch().float().cpu().numpy()
    ours = model(x_np)
    err = rel_err(ours, ref)
    result = {"network": name, "batch": batch, "rel_err_vs_pytorch_fp32": err}
    result["cnngraph_ms"] = timer(lambda: model(x_dev), repeats)
    result["pytorch_fp32_ms"] = timer(run_torch, repeats)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    result["pytorch_tf32_ms"] = timer(run_torch, repeats)
    nchw = net.tensors, x_t
    net.tensors = {k: channels_last(v) for k, v in nchw[0].items()}
    x_t = channels_last(x_t)
    result["pytorch_tf32_channels_last_ms"] = timer(run_torch, repeats)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    result["pytorch_fp32_channels_last_ms"] = timer(run_torch, repeats)
    net.tensors, x_t = nchw
    result.update(pytorch_half_and_compiled(spec, model.weights, x_np, ref, repeats,
                                            compile=(name, batch) in COMPILED, device=device, timer=timer))
    best_torch_fp32 = min(result["pytorch_fp32_ms"], result["pytorch_fp32_channels_last_ms"])
    result["speed_vs_pytorch_fp32"] = best_torch_fp32 / result["cnngraph_ms"]  # above 1: cnngraph faster
    result["speed_vs_pytorch_tf32"] = result["pytorch_tf32_ms"] / result["cnngraph_ms"]
    result["images_per_s"] = {k.removesuffix("_ms"): batch / (result[k] * 1e-3)
                              for k in ("cnngraph_ms", "pytorch_fp32_ms", "pytorch_tf32_ms")}
    if batch == 1:
        plain = cnngraph.compile(spec, batch_size=1, device=device, cuda_graph=False, weights=model.weights)
        result["cnngraph_no_graph_ms"] = timer(lambda: plain(x_dev), repeats)
    best_torch_tf32 = min(result["pytorch_tf32_ms"], result["pytorch_tf32_channels_last_ms"])
    for precision in precisions:
        if precision == "fp32":
            continue
        reduced = cnngraph.compile(spec, batch_size=batch, device=device, weights=model.weights, precision=precision)
        result[f"rel_err_{precision}_vs_pytorch_fp32"] = rel_err(reduced(x_np), ref)
        result[f"cnngraph_{precision}_ms"] = timer(lambda: reduced(x_dev), repeats)
        result[f"speed_{precision}_vs_best_pytorch_tf32"] = best_torch_tf32 / result[f"cnngraph_{precision}_ms"]
        result[f"{precision}_kernels"] = kernel_rows(reduced, x_np, repeats, peak_for(card, precision))
        if precision in ("fp16", "bf16"):  # against PyTorch's own half precision, channels_last
            result[f"speed_{precision}_vs_pytorch_{precision}_channels_last"] = (
                result[f"pytorch_{precision}_channels_last_ms"] / result[f"cnngraph_{precision}_ms"])
        if tune and (name, batch) in TUNED and precision in TUNED_PRECISIONS:
            start = time.perf_counter()
            tuned = cnngraph.compile(spec, batch_size=batch, device=device, weights=model.weights, autotune=True,
                                     precision=precision)
            result[f"autotune_{precision}_s"] = time.perf_counter() - start
            result[f"cnngraph_{precision}_tuned_ms"] = timer(lambda: tuned(x_dev), repeats)
            result[f"rel_err_{precision}_tuned_vs_pytorch_fp32"] = rel_err(tuned(x_np), ref)
            result[f"{precision}_tuned_tiles"] = sorted(
                f"{s.tile.bm}x{s.tile.bn}x{s.tile.bk}" + (f"/{s.splits}" if s.splits > 1 else "")
                for s in tuned.backend.schedules.values())
    if tune and (name, batch) in TUNED:
        start = time.perf_counter()
        tuned = cnngraph.compile(spec, batch_size=batch, device=device, weights=model.weights, autotune=True)
        result["autotune_s"] = time.perf_counter() - start
        result["rel_err_tuned_vs_pytorch_fp32"] = rel_err(tuned(x_np), ref)
        result["cnngraph_tuned_ms"] = timer(lambda: tuned(x_dev), repeats)
        result["speed_tuned_vs_pytorch_fp32"] = best_torch_fp32 / result["cnngraph_tuned_ms"]
        result["tuned_layers"] = sum(1 for pick, _, _ in tuned.backend.tuning.values() if pick)
        chosen = list(tuned.backend.schedules.values())
        result["tuned_schedules"] = {"grouped_rows": sum(s.tile.grouped for s in chosen),
                                     "bk16": sum(s.tile.bk == 16 for s in chosen),
                                     "split_k": sum(s.splits > 1 for s in chosen), "layers": len(chosen)}
    result["fp32_kernels"] = kernel_rows(model, x_np, repeats, peak_for(card))
    return result


def pytorch_half_and_compiled(spec: dict, weights: dict, x_np: np.ndarray, ref: np.ndarray, repeats: int,
                              compile: bool = True, device: str = "cuda", timer=None) -> dict:
    """PyTorch eager at FP16 and BF16 (weights and input cast, channels_last, as `model.half()`
    with `memory_format=torch.channels_last` runs), and when `compile`, `torch.compile` (default
    mode) of the FP32 network: each one's median ms and relative error against `ref`, and the
    compile's seconds (its first call). `timer(fn, repeats) -> ms` defaults to CUDA events."""
    import torch
    from torch_oracle import TorchNet

    timer = timer or time_ms
    result = {}

    for label, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        net = TorchNet(spec, weights, dtype=dtype).eval()
        net.tensors = {k: channels_last(v.to(device)) for k, v in net.tensors.items()}
        x = channels_last(torch.from_numpy(x_np).to(device, dtype))

        def run(net=net, x=x):
            with torch.inference_mode():
                return net(x)
        got = run().float().cpu().numpy()
        result[f"rel_err_pytorch_{label}_vs_pytorch_fp32"] = rel_err(got, ref)
        result[f"pytorch_{label}_channels_last_ms"] = timer(run, repeats)
    if not compile:
        return result
    net = TorchNet(spec, weights).eval()
    net.tensors = {k: v.to(device) for k, v in net.tensors.items()}
    x = torch.from_numpy(x_np).to(device)
    try:
        compiled = torch.compile(net)
        start = time.perf_counter()
        with torch.inference_mode():
            got = compiled(x).float().cpu().numpy()
        result["torch_compile_s"] = time.perf_counter() - start
    except Exception as err:  # a backend that cannot compile this network: say why, keep benchmarking
        result["torch_compile_error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return result
    result["rel_err_torch_compile_vs_pytorch_fp32"] = rel_err(got, ref)
    if result["torch_compile_s"] > COMPILE_LIMIT_S:  # not a compiler one waits for: not timed
        return result

    def run_compiled():
        with torch.inference_mode():
            return compiled(x)
    result["pytorch_compiled_fp32_ms"] = timer(run_compiled, repeats)
    return result


def kernel_rows(model, x: np.ndarray, repeats: int, peak: float | None) -> dict:
    """The conv/linear kernels' times, each against the precision's peak: the three largest, the
    total, and every kernel."""
    kernels = [{**k, "fraction_of_peak": k["tflops"] / peak if peak else None}
               for k in kernel_times(model, x, max(10, repeats // 5))]
    total = sum(k["ms"] for k in kernels)
    return {"top": kernels[:3], "total_ms": total, "tflops": sum(k["gflop"] for k in kernels) / total,
            "peak_tflops": peak, "all": kernels}


def half_line(r: dict, precision: str) -> str:
    """One case's result at a 16-bit precision, in words, for the table."""
    tops = ", ".join(f"{k['tflops']:.0f}" for k in r[f"{precision}_kernels"]["top"])
    return (f"{precision} {r[f'cnngraph_{precision}_ms']:.3f} ms "
            f"(x{r[f'speed_{precision}_vs_pytorch_{precision}_channels_last']:.2f} PyTorch {precision} NHWC, "
            f"err {r[f'rel_err_{precision}_vs_pytorch_fp32']:.1e}, top kernels {tops} TFLOP/s)")


def table(card: str, results: list[dict]) -> list[str]:
    """The results as the lines of a table, one case after another."""
    nan = float("nan")
    out = [f"{card}: peaks {', '.join(f'{p} {peak_for(card, p)}' for p in PEAK_TFLOPS)} TFLOP/s; "
           "x = PyTorch time / cnngraph time (above 1: cnngraph faster)",
           f"{'network':13s} {'batch':>5s} {'ours fp32':>9s} {'ours tf32':>9s} {'torch fp32':>10s} "
           f"{'torch tf32':>10s} {'tf32 NHWC':>9s} {'x fp32':>7s} {'x tf32':>7s} {'err tf32':>8s}  "
           "top conv kernels tf32 (TFLOP/s)"]
    for r in results:
        tops = ", ".join(f"{k['tflops']:.1f}" for k in r.get("tf32_kernels", r["fp32_kernels"])["top"])
        out.append(f"{r['network']:13s} {r['batch']:5d} {r['cnngraph_ms']:9.3f} "
                   f"{r.get('cnngraph_tf32_ms', nan):9.3f} {r['pytorch_fp32_ms']:10.3f} "
                   f"{r['pytorch_tf32_ms']:10.3f} {r['pytorch_tf32_channels_last_ms']:9.3f} "
                   f"{r['speed_vs_pytorch_fp32']:7.2f} {r.get('speed_tf32_vs_best_pytorch_tf32', nan):7.2f} "
                   f"{r.get('rel_err_tf32_vs_pytorch_fp32', nan):8.1e}  {tops}")
        halves = [half_line(r, p) for p in ("fp16", "bf16") if f"cnngraph_{p}_ms" in r]
        if halves:
            out.append(f"{'':13s} ours " + "; ".join(halves))
        if "pytorch_compiled_fp32_ms" in r:
            compiled = f"{r['pytorch_compiled_fp32_ms']:.3f} ms (compiled in {r['torch_compile_s']:.0f} s)"
        elif "torch_compile_s" in r:
            compiled = f"not timed (compiling took {r['torch_compile_s']:.0f} s)"
        else:
            compiled = r.get("torch_compile_error", "-")
        out.append(f"{'':13s} PyTorch NHWC fp32 {r['pytorch_fp32_channels_last_ms']:.3f} ms, "
                   f"fp16 {r['pytorch_fp16_channels_last_ms']:.3f} ms, "
                   f"bf16 {r['pytorch_bf16_channels_last_ms']:.3f} ms; "
                   f"torch.compile fp32 {compiled}")
        if "cnngraph_no_graph_ms" in r:
            out.append(f"{'':13s} batch-1 latency without the CUDA graph: {r['cnngraph_no_graph_ms']:.3f} ms")
        if "cnngraph_tf32_tuned_ms" in r:
            out.append(f"{'':13s} autotuned tf32: {r['cnngraph_tf32_tuned_ms']:.3f} ms "
                       f"(tuning took {r['autotune_tf32_s']:.0f} s)")
        if "cnngraph_tuned_ms" in r:
            out.append(f"{'':13s} autotuned fp32: {r['cnngraph_tuned_ms']:.3f} ms, "
                       f"x fp32 {r['speed_tuned_vs_pytorch_fp32']:.2f} ({r['tuned_layers']} layers changed schedule, "
                       f"tuning took {r['autotune_s']:.0f} s; chosen: {r['tuned_schedules']})")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--cases", help="network:batch,... (default: the six standard cases, in order)")
    p.add_argument("--precisions", default="fp32,tf32,fp16,bf16",
                   help="cnngraph precisions to measure (default: fp32,tf32,fp16,bf16)")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the autotuned models of the tuned cases (--no-tune: skip them)")
    p.add_argument("--out", help="also write the JSON into this folder")
    p.add_argument("--budget", type=float, help="seconds: start no case after this long (the rest are listed)")
    args = p.parse_args()
    import cupy as cp
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")] if args.cases else CASES
    precisions = args.precisions.split(",")
    card = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    results, skipped, start = [], [], time.perf_counter()
    with progress_bar(len(cases), "cases", "case") as bar:
        for name, batch in cases:
            if args.budget is not None and time.perf_counter() - start > args.budget:
                skipped.append(f"{name}:{batch}")
                continue
            results.append(bench_case(name, batch, args.repeats, card, precisions, args.tune))
            print(json.dumps({k: v for k, v in results[-1].items() if not k.endswith("_kernels")}), flush=True)
            bar.update(1)
    print("\n" + "\n".join(table(card, results)))
    if skipped:
        print(f"not measured (over the {args.budget:.0f} s budget): {', '.join(skipped)}")
    record = {"date": datetime.date.today().isoformat(), "card": card, "peak_tflops": {
              p: peak_for(card, p) for p in PEAK_TFLOPS},
              "cupy": cp.__version__, "results": results, "skipped": skipped}
    slug = re.sub(r"[^A-Za-z0-9]+", "-", card).strip("-").lower()
    path = ROOT / "bench" / "results" / f"gpu-{record['date']}-{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    if args.out:
        (Path(args.out) / path.name).write_text(path.read_text())
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
