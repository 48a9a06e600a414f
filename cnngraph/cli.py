"""The `cnngraph` command: validate, inspect, run, predict, check, profile, codegen, import-onnx,
export-onnx, schema.

Every error a user can cause ends with one line on stderr and exit status 2, never a traceback;
files (and `codegen`'s folder) are written under a temporary name and renamed into place, so
nothing is left half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from . import build, compile, plan
from .model import DEVICE_FORMS, parse_device
from .codegen.dialects import DIALECTS, Dialect
from .codegen.lower import Program
from .errors import CnnGraphError, CnnGraphWarning, DeviceError, InputError, WeightsError, one_line, quote
from .files import atomic_write, atomic_write_folder, refuse_overwriting, require_folder
from .html_report import html_page
from .precision import HALF_STORAGE
from .progress import progress_bar
from .interop import export_onnx, from_onnx
from .report import inspect_data, inspect_text, to_dot
from .spec import json_schema, load_spec, spec_json
from .weights import read_arrays, read_npy, save_weights

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        print(f"cnngraph: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # unwinds like Ctrl-C: no temporary file is left behind
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", CnnGraphWarning)
            warnings.showwarning = _show_note
            return args.handler(args) or 0
    except CnnGraphError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # `cnngraph inspect ... | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so `finally` and cleanup handlers run."""


def _terminated(signum, frame):
    raise Terminated()


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """CnnGraphWarnings as one `note:` line on stderr; other warnings as Python prints them."""
    if issubclass(category, CnnGraphWarning):
        print(f"note: {one_line(str(message))}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cnngraph", description="Compile CNNs written as JSON into fast kernels.")
    sub = p.add_subparsers(required=True, metavar="COMMAND", parser_class=_Parser)

    v = sub.add_parser("validate", help="check a spec: fields, references, shapes")
    v.add_argument("spec")
    v.add_argument("--batch", type=_positive, default=1)
    v.set_defaults(handler=_validate)

    i = sub.add_parser("inspect", help="the graph as a table, JSON, Graphviz DOT or an HTML page")
    i.add_argument("spec")
    i.add_argument("--raw", action="store_true", help="the graph before optimization (html: shown first)")
    i.add_argument("--batch", type=_positive, default=1)
    i.add_argument("--format", choices=("table", "json", "dot", "html"), default="table")
    i.add_argument("-o", "--output", help="write to this file instead of stdout")
    _precision_argument(i)
    i.add_argument("--profile", metavar="DEVICE", nargs="?", const="auto", type=_device,
                   help="html: also run the model on DEVICE (default auto) and show each node's time")
    i.set_defaults(handler=_inspect)

    c = sub.add_parser("codegen", help="write the generated kernels, one file each, and a manifest")
    c.add_argument("spec")
    c.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to create")
    c.add_argument("--batch", type=_positive, default=1)
    c.add_argument("--dialect", choices=sorted(DIALECTS), default="cuda")
    c.add_argument("--weights", help=".npz or .safetensors to check against the network (default: seeded random)")
    c.add_argument("--force", action="store_true", help="replace DIR even if it is not empty")
    _precision_argument(c)
    c.set_defaults(handler=_codegen)

    r = sub.add_parser("run", help="compile and run a network on random or given input")
    r.add_argument("spec")
    r.add_argument("--weights", help=".npz or .safetensors (default: seeded random weights)")
    r.add_argument("--input", help=".npy input, (N, C, H, W) or one sample (C, H, W); default: seeded random")
    r.add_argument("--batch", type=_positive, help="batch size (default: the input's, else 1)")
    r.add_argument("--device", default="auto", type=_device, help="auto (default: CUDA if a GPU is usable, "
                   "else NumPy), cpu, cuda, cuda:N (GPU N) or opencl")
    r.add_argument("--output", help="save the output: .npy (one output) or .npz")
    r.add_argument("--seed", type=_non_negative, default=0, help="seed of the random weights and input")
    r.add_argument("--no-optimize", dest="optimize", action="store_false")
    _precision_argument(r)
    r.add_argument("--max-memory", metavar="SIZE", help="refuse a network that needs more (weights, activations, "
                   "scratch), e.g. 2GiB (default: 80%% of the RAM, 90%% of the GPU's memory)")
    r.set_defaults(handler=_run)

    d = sub.add_parser("predict", help="run the network over images or arrays; a table of results")
    d.add_argument("spec")
    d.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively), globs, "
                                                              ".npy/.npz arrays")
    d.add_argument("--weights", help=".npz or .safetensors (default: seeded random weights)")
    d.add_argument("--batch", type=_positive, default=8)
    d.add_argument("--device", default="auto", type=_device, help=DEVICE_FORMS)
    d.add_argument("--top", type=_positive, default=5, help="classes per row (default 5)")
    d.add_argument("-o", "--output", default="predictions.csv", help=".csv (default predictions.csv), .jsonl or .parquet")
    d.add_argument("--resume", action="store_true", help="skip the inputs the output (or its .partial) already has")
    d.add_argument("--workers", type=_positive, default=4, help="threads decoding images ahead (default 4); with "
                                                                  "--ray, inference actors")
    d.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on a Ray cluster: auto, ray://host:10001, or none for a new local one")
    _precision_argument(d)
    d.set_defaults(handler=_predict)

    k = sub.add_parser("check", help="compare every fused node with a float64 reference of the raw network")
    k.add_argument("spec")
    k.add_argument("--weights", help=".npz or .safetensors (default: seeded random weights)")
    k.add_argument("--input", help=".npy/.npz input (default: seeded random normal data)")
    k.add_argument("--batch", type=_positive, help="batch size (default: the input's, else 1)")
    k.add_argument("--device", default="auto", type=_device, help=DEVICE_FORMS)
    k.add_argument("--tolerance", type=float, help="relative error allowed per node (default 1e-4; 1e-2 at tf32 and "
                                                         "fp16, 5e-2 at bf16)")
    k.add_argument("--seed", type=_non_negative, default=0)
    _precision_argument(k)
    k.set_defaults(handler=_check)

    f = sub.add_parser("profile", help="time every kernel of the compiled model on its device")
    f.add_argument("spec")
    f.add_argument("--weights", help=".npz or .safetensors (default: seeded random weights)")
    f.add_argument("--batch", type=_positive, default=1)
    f.add_argument("--device", default="auto", type=_device, help=DEVICE_FORMS)
    f.add_argument("--repeats", type=_positive, default=10, help="timed calls; medians are shown (default 10)")
    f.add_argument("--format", choices=("table", "json"), default="table")
    _precision_argument(f)
    f.set_defaults(handler=_profile)

    m = sub.add_parser("import-onnx", help="an ONNX model as a spec and a weights file")
    m.add_argument("model", help="the .onnx file")
    m.add_argument("-o", "--output", required=True, metavar="SPEC", help="the spec (.json) to write")
    m.add_argument("--weights-out", metavar="W", help=".safetensors or .npz to write (default: SPEC with the "
                   ".safetensors suffix)")
    m.set_defaults(handler=_import_onnx)

    e = sub.add_parser("export-onnx", help="a spec as an ONNX model (for ONNX Runtime, Netron)")
    e.add_argument("spec")
    e.add_argument("-o", "--output", required=True, metavar="MODEL", help="the .onnx file to write")
    e.add_argument("--weights", help=".npz or .safetensors (default: seeded random weights)")
    e.add_argument("--no-annotate", dest="annotate", action="store_false",
                   help="leave out the fused groups of the optimized graph (node metadata_props)")
    e.set_defaults(handler=_export_onnx)

    s = sub.add_parser("schema", help="print the JSON Schema of the spec format")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    s.set_defaults(handler=_schema)
    return p


def _at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value
    return parse


_positive, _non_negative = _at_least(1, "positive"), _at_least(0, "non-negative")


def _device(text: str) -> str:
    try:
        parse_device(text)
    except DeviceError:
        raise argparse.ArgumentTypeError(f"expected one of {DEVICE_FORMS}; got {text!r}") from None
    return text


def _validate(args) -> None:
    spec = load_spec(args.spec)
    g = build(spec, args.batch)
    outs = ", ".join(f"{o} {tuple(g.nodes[o]['shape'])}" for o in spec.output_names)
    print(f"ok: {args.spec}: {spec.name}, {len(spec.layers)} layers; output {outs}")


INSPECT_FORMATS = {"table": inspect_text, "json": lambda g: json.dumps(inspect_data(g), indent=2), "dot": to_dot}


def _inspect(args) -> None:
    if args.output:
        refuse_overwriting(args.output, args.spec)
    spec = load_spec(args.spec)
    if args.format == "html":  # the page holds both graphs and switches between them
        graphs = {kind: _inspected_graph(spec, args.batch, kind == "optimized", args.precision)
                  for kind in ("optimized", "raw")}
        times = _node_times(spec, args.batch, args.profile, args.precision) if args.profile else None
        text = html_page(spec, graphs, initial="raw" if args.raw else "optimized", times=times)
    elif args.profile:
        raise CnnGraphError("--profile shows times on the html page: add --format html (or use cnngraph profile)")
    else:
        text = INSPECT_FORMATS[args.format](_inspected_graph(spec, args.batch, not args.raw, args.precision))
    _emit(text, args.output)


def _node_times(spec, batch: int, device: str, precision: str) -> dict:
    """node -> its kernels' time, ms (medians of 10 calls), and the device, for `inspect --profile`."""
    from .profile import profile

    model = _compile(spec, batch_size=batch, device=device, precision=precision)
    rng = np.random.default_rng(0)
    times = profile(model, {i.name: rng.standard_normal((batch, *i.shape)).astype(np.float32) for i in spec.inputs})
    by_node: dict[str, float] = {}
    for t in times:
        by_node[t.node] = by_node.get(t.node, 0.0) + t.ms
    return {"device": model.device, "ms": by_node}


def _compile(spec, **options):
    """`compile`, saying on a terminal what is being compiled and how long it took (building
    the kernels of a large network for OpenCL or CUDA takes a while)."""
    if not sys.stderr.isatty():
        return compile(spec, **options)
    print(f"compiling {spec.name} ({len(spec.layers)} layers) for device {options.get('device', 'auto')}...",
          end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        model = compile(spec, **options)
    finally:
        print("\r\033[K", end="", file=sys.stderr, flush=True)  # the line cleared, done or not
    print(f"compiled {spec.name} for {model.device} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return model


def _precision_argument(parser) -> None:
    parser.add_argument("--precision", default="fp32", metavar="P",
                        help="fp32 (default); tf32: conv/linear products on the tensor cores; fp16 or bf16: "
                             "tensors and conv/linear weights stored in 16 bits (sm_80+ on CUDA; the CPU "
                             "backends round the same way)")


def _inspected_graph(spec, batch: int, optimize: bool, precision: str):
    """The planned graph: seeded weights (parameter counts, bytes) and planned memory; no device."""
    return plan(spec, batch, optimize=optimize, precision=precision).graph


def _codegen(args) -> None:
    target = Path(args.output)
    refuse_overwriting(target, args.spec, args.weights)
    _check_folder_target(target, args.force)  # refuse before compiling, not after
    planned = plan(load_spec(args.spec), args.batch, weights=args.weights, precision=args.precision)
    try:
        program, dialect = planned.program, DIALECTS[args.dialect]
    except NotImplementedError as err:  # an op without a kernel yet
        raise CnnGraphError(f"cannot generate kernels: {err}", file=args.spec) from None
    files = {f"{launch.kernel}{dialect.suffix}": program.source(dialect, launch) for launch in program.launches}
    files["manifest.json"] = json.dumps(codegen_manifest(program, dialect, args.batch, planned.precision),
                                        indent=2) + "\n"
    atomic_write_folder(target, files)
    print(f"wrote {len(program.launches)} {dialect.name} kernels and manifest.json to {target}")


def codegen_manifest(program: Program, dialect: Dialect, batch: int, precision: str = "fp32") -> dict:
    """What `cnngraph codegen` writes as manifest.json. Arena sizes and offsets are elements of the
    precision's storage (float32, or 16-bit at fp16/bf16); the workspace is float32 elements."""
    def arg(kind: str, ref: str) -> dict:
        if kind == "tensor":
            offset, size, shape = program.tensors[ref]
            padded = program.padded_channels.get(ref)  # size counts them
            return {"kind": kind, "node": ref, "offset": offset, "size": size, "shape": list(shape),
                    "layout": program.layout(ref), **({"padded_channels": padded} if padded else {})}
        if kind == "const":
            value = program.constants[ref]
            return {"kind": kind, "name": ref, "shape": list(value.shape), "dtype": str(value.dtype)}
        if kind == "counters":  # int32, zero before and after every launch
            return {"kind": kind, "size": program.counters_size, "dtype": "int32"}
        return {"kind": kind, "size": program.workspace_size}

    launches = [{"kernel": l.kernel, "file": f"{l.kernel}{dialect.suffix}", "grid": list(l.grid),
                 "block": list(l.block), "args": [arg(kind, ref) for kind, ref in l.args], "node": l.node,
                 "shared_bytes": l.shared_bytes, "layers": list(l.layers), "flops": l.flops}
                for l in program.launches]
    return {"name": program.name, "dialect": dialect.name, "batch": batch, "precision": precision,
            "unit": f"{precision} elements" if precision in HALF_STORAGE else "float32 elements",
            "arena_size": program.arena_size, "workspace_size": program.workspace_size,
            "counters_size": program.counters_size,
            "inputs": {n: arg("tensor", n) for n in program.inputs},
            "outputs": {n: arg("tensor", n) for n in program.outputs}, "launches": launches}


def _check_folder_target(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise CnnGraphError("exists and is not a folder", file=str(target))
    if target.is_dir() and any(target.iterdir()) and not force:
        raise CnnGraphError("exists and is not empty; use --force to replace it", file=str(target))
    if target.is_dir() and Path.cwd().resolve().is_relative_to(target.resolve()):
        raise CnnGraphError("is the current folder or holds it; name a folder of its own", file=str(target))
    require_folder(target)


def _import_onnx(args) -> None:
    spec_path = Path(args.output)
    weights_path = Path(args.weights_out) if args.weights_out else spec_path.with_suffix(".safetensors")
    if weights_path.suffix not in (".safetensors", ".npz"):
        raise CnnGraphError("unknown weights format; use a .safetensors or .npz file", file=str(weights_path))
    if weights_path.resolve() == spec_path.resolve():
        raise CnnGraphError("the spec and the weights would be the same file; name the spec .json or give "
                            "--weights-out", file=str(spec_path))
    for target in (spec_path, weights_path):  # refuse before converting, and before writing either file
        refuse_overwriting(target, args.model)
        require_folder(target)
    spec, weights = from_onnx(args.model)
    save_weights(weights, weights_path)
    atomic_write(spec_path, lambda f: f.write(spec_json(spec).encode()))
    params = sum(int(w.size) for w in weights.values())
    print(f"wrote {spec_path}: {spec.name}, {len(spec.layers)} layers, inputs "
          + ", ".join(f"{i.name} {tuple(i.shape)}" for i in spec.inputs) + f", outputs {', '.join(spec.output_names)}")
    print(f"wrote {weights_path}: {len(weights)} tensors, {params:,} parameters")


def _export_onnx(args) -> None:
    refuse_overwriting(args.output, args.spec, args.weights)
    spec = load_spec(args.spec)
    model = export_onnx(spec, args.output, weights=args.weights, annotate=args.annotate)
    opset = model.opset_import[0].version
    fused = sum(1 for n in model.graph.node if any(p.key == "cnngraph.fused_op" for p in n.metadata_props))
    print(f"wrote {args.output}: {spec.name}, {len(model.graph.node)} ONNX nodes, opset {opset}, "
          f"{len(model.graph.initializer)} initializers"
          + ("" if args.weights else " (seeded random weights; pass --weights for trained ones)")
          + (f"; {fused} nodes annotated with their fused group" if args.annotate else ""))


def _schema(args) -> None:
    _emit(json.dumps(json_schema(), indent=2), args.output)


def _emit(text: str, output: str | None) -> None:
    if output:
        atomic_write(output, lambda f: f.write((text + "\n").encode()))
    else:
        print(text)


def _run(args) -> None:
    if args.output:
        refuse_overwriting(args.output, args.spec, args.input, args.weights)
    spec = load_spec(args.spec)
    given = _read_inputs(args.input, spec) if args.input else None
    batch = _input_batch(given, args.batch, args.input)
    model = _compile(spec, batch_size=batch, device=args.device, weights=args.weights, seed=args.seed,
                    optimize=args.optimize, max_memory=args.max_memory, precision=args.precision)
    if args.output:  # refuse a bad output name before running, not after
        _check_output_path(args.output, len(model.output_names))
    if given is None:
        rng = np.random.default_rng(args.seed)
        given = {i.name: rng.standard_normal((batch, *i.shape)).astype(np.float32) for i in spec.inputs}
    print(f"network: {spec.name} ({len(spec.layers)} layers -> {len(model.graph) - len(spec.inputs)} nodes), "
          f"batch {batch}, device {model.device}" + (f" ({model.device_note})" if model.device_note else "")
          + f", precision {model.precision}")
    if model.random_weights:
        print(f"weights: seeded random initialisation (seed {args.seed}); pass --weights for trained ones")
    if not args.input:
        print("input: seeded random normal data " + ", ".join(f"{name} {x.shape}" for name, x in given.items()))
    start = time.perf_counter()
    y = model(given)
    first = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model(given)
        times.append(time.perf_counter() - start)
    outputs = y if isinstance(y, dict) else {model.output_names[0]: y}
    for name, value in outputs.items():
        print(f"output {name}: shape {value.shape}, mean {value.mean():.4g}, std {value.std():.4g}")
        if value.ndim == 2 and value.shape[1] >= 2:
            for n in range(min(batch, 4)):
                top = np.argsort(value[n])[::-1][:5]
                print(f"  sample {n}: top-5 " + ", ".join(f"{c} ({value[n, c]:.3g})" for c in top))
    print(f"time: first call {first * 1e3:.1f} ms, then median {np.median(times) * 1e3:.1f} ms "
          f"({batch / np.median(times):.1f} samples/s)")
    if args.output:
        _save_output(outputs, args.output)
        print(f"saved {args.output}")


def _profile(args) -> None:
    from .profile import profile, profile_table

    spec = load_spec(args.spec)
    model = _compile(spec, batch_size=args.batch, device=args.device, weights=args.weights, precision=args.precision)
    rng = np.random.default_rng(0)
    given = {i.name: rng.standard_normal((args.batch, *i.shape)).astype(np.float32) for i in spec.inputs}
    times = profile(model, given, args.repeats)
    if args.format == "json":
        print(json.dumps({"network": spec.name, "device": model.device, "precision": model.precision,
                          "batch": args.batch, "kernels": [{**t.__dict__, "gflops": t.gflops,
                                                            "gbytes_per_s": t.gbytes_per_s} for t in times]},
                         indent=2))
    else:
        print(profile_table(model, times))


EXIT_SOME_INPUTS_FAILED = 3
EXIT_CHECK_FAILED = 1


def _check(args) -> int:
    """The table of every node's error against the float64 reference; exit 1 when one is over."""
    from .check import check

    if args.tolerance is not None and not args.tolerance >= 0:
        raise CnnGraphError(f"--tolerance must be a number >= 0, got {args.tolerance}")
    spec = load_spec(args.spec)
    given = _read_inputs(args.input, spec) if args.input else None
    batch = _input_batch(given, args.batch, args.input)
    model = _compile(spec, batch_size=batch, device=args.device, weights=args.weights, seed=args.seed,
                    precision=args.precision)
    if given is None:
        rng = np.random.default_rng(args.seed)
        given = {i.name: rng.standard_normal((batch, *i.shape)).astype(np.float32) for i in spec.inputs}
    for name, x in given.items():
        model._check_input(name, x)
    report = check(model, given, args.tolerance)
    print(f"{spec.name}: device {model.device}, precision {model.precision}, batch {batch}; every node against "
          "float64 PyTorch of the raw network")
    print(report.table())
    return EXIT_CHECK_FAILED if report.first_failure else 0


def _predict(args) -> int:
    """Rows stream into OUTPUT.partial (JSON lines) as batches finish, so an interrupted run keeps
    them for --resume; the table is written whole at the end and the .partial removed."""
    from .predict import TABLE_SUFFIXES, flat_row, predict, read_table, write_table

    out = Path(args.output)
    if out.suffix not in TABLE_SUFFIXES:
        raise CnnGraphError(f"the output must end in {', '.join(TABLE_SUFFIXES)}", file=args.output)
    refuse_overwriting(out, args.spec, args.weights, *args.inputs)
    require_folder(out.parent)
    partial = out.with_name(out.name + ".partial")
    earlier = []
    if args.resume:
        earlier = (read_table(out) if out.exists() else []) + (_partial_rows(partial) if partial.exists() else [])
        earlier = list({row["input"]: row for row in earlier}.values())
    spec = load_spec(args.spec)
    outputs = out.with_name(out.stem + "_outputs")  # the arrays of a network that is not a classifier
    failed, fresh = 0, []
    with open(partial, "a" if args.resume else "w", encoding="utf-8") as log, \
            progress_bar(desc="predict", unit="input") as bar:
        for index, row in enumerate(predict(spec, args.inputs, weights=args.weights, batch_size=args.batch,
                                            device=args.device, top=args.top, workers=args.workers,
                                            precision=args.precision, skip=[r["input"] for r in earlier],
                                            progress=bar.update, ray=args.ray)):
            if row["error"]:
                failed += 1
                bar.write(f"error: {row['input']}: {row['error']}", file=sys.stderr)
            if "output" in row:
                row["output"] = _save_sample_output(outputs, len(earlier) + index, row["output"])
            fresh.append(flat_row(row, args.top))
            log.write(json.dumps(fresh[-1]) + "\n")
            log.flush()
    rows = earlier + fresh
    write_table(out, rows)
    partial.unlink()
    print(f"wrote {len(rows)} rows to {out}" + (f" ({failed} inputs failed)" if failed else ""))
    return EXIT_SOME_INPUTS_FAILED if failed else 0


def _partial_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # the last line of an interrupted run may be cut short
    return rows


def _save_sample_output(folder: Path, index: int, value) -> str:
    """One sample's output as `folder/<index>.npy` (an .npz when there are several); its path."""
    require_folder(folder) if folder.exists() else folder.mkdir()
    if isinstance(value, dict):
        path = folder / f"{index:06d}.npz"
        atomic_write(path, lambda f: np.savez(f, **value))
    else:
        path = folder / f"{index:06d}.npy"
        atomic_write(path, lambda f: np.save(f, value))
    return str(path)


def _read_inputs(path: str, spec) -> dict[str, np.ndarray]:
    """Input arrays by name: a .npy for a network with one input, a .npz with one array per input
    name for any network (its names checked before any data is read: a missing input, or an array
    that is no input, is refused by name). A single sample may leave out the batch dimension."""
    names = [i.name for i in spec.inputs]
    if Path(path).suffix == ".npz":
        def check_names(keys: list[str]) -> None:
            valid = f"the network's inputs are {', '.join(map(quote, names))}"
            missing, extra = [n for n in names if n not in keys], [k for k in keys if k not in names]
            if missing:
                holds = f"; the file holds {', '.join(map(quote, keys))}" if keys else "; the file holds no arrays"
                raise InputError(f"missing array {quote(missing[0])} ({valid}{holds})", file=path)
            if extra:
                raise InputError(f"unexpected array {quote(extra[0])}: a .npz holds one array per network input, "
                                 f"and {valid}", file=path)
        try:  # the same safe reader as weights: headers checked first, no pickle
            arrays = read_arrays(Path(path), what="the input", on_keys=check_names)
        except WeightsError as err:
            raise InputError(err.message, file=path) from None
        return {i.name: _samples(arrays[i.name], i, path, f"array {quote(i.name)} ") for i in spec.inputs}
    if len(names) > 1:
        raise InputError(f"the network has inputs {', '.join(names)}: give a .npz with one array per name", file=path)
    return {names[0]: _samples(read_npy(path, mmap=True), spec.inputs[0], path)}


def _input_batch(given: dict[str, np.ndarray] | None, batch: int | None, path: str | None) -> int:
    """The batch size: --batch, else the first input's; every input must hold that many samples."""
    if not given:
        return batch or 1
    want = batch or next(iter(given.values())).shape[0]
    for name, x in given.items():
        if x.shape[0] != want:
            batch_from = "--batch is" if batch else "the first input holds"
            raise InputError(f"input {quote(name)} holds {x.shape[0]} samples but {batch_from} {want}", file=path)
    return want


def _samples(x, inp, path: str, subject: str = "") -> np.ndarray:
    """`x` checked against network input `inp`, as contiguous float32 samples; `subject` names the
    array in the file ('array "x" ') when it holds several. NaN and Inf are kept, with a note: they
    propagate through the network as in PyTorch."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise InputError(f"{subject}must hold floating-point numbers (float32; float16 and float64 are converted), "
                         f"got {getattr(x, 'dtype', type(x).__name__)}", file=path)
    if x.ndim == len(inp.shape):
        x = x[None]  # one sample
    if x.ndim == 0 or x.shape[0] == 0:
        raise InputError(f"{subject}holds no samples (shape {x.shape})", file=path)
    if x.shape[1:] != tuple(inp.shape):
        raise InputError(f'{subject}has per-sample shape {x.shape[1:]}, the network\'s input {quote(inp.name)} needs '
                         f"{tuple(inp.shape)}", file=path)
    x = np.ascontiguousarray(x, dtype=np.float32)
    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    if nan or inf:
        warnings.warn(f"{path}: {subject}holds {nan} NaN and {inf} infinite values; they propagate through the "
                      f"network as in PyTorch", CnnGraphWarning)
    return x


def _check_output_path(path: str, n_outputs: int) -> None:
    target = Path(path)
    if not (target.suffix == ".npz" or (target.suffix == ".npy" and n_outputs == 1)):
        raise InputError("must end in .npz (several outputs) or .npy (one output)", file=path)
    require_folder(target)


def _save_output(outputs: dict[str, np.ndarray], path: str) -> None:
    _check_output_path(path, len(outputs))
    if Path(path).suffix == ".npz":
        atomic_write(path, lambda f: np.savez(f, **outputs))
    else:
        atomic_write(path, lambda f: np.save(f, next(iter(outputs.values()))))


if __name__ == "__main__":
    sys.exit(main())
