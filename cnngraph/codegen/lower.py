"""Lowering: the optimized, memory-planned graph becomes a `Program`, an ordered list of kernel
launches over one arena. Every backend but NumPy executes a Program.

A launch's arguments are tensors (arena ranges, by node) or constants (weights rearranged for the
kernel, e.g. conv weights as a (groups, C/g*KH*KW, K/g) GEMM operand). Sources are in the
neutral dialect; `Program.source(dialect)` renders them.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from .. import ops
from ..ops.base import pair
from ..ops.epilogue import label, residual_count, scale_shifts, to_c
from . import templates as T
from .dialects import Dialect


@dataclass
class Launch:
    kernel: str                    # unique name, says what it computes: conv3x3s1_bias_relu_64x56x56
    body: str                      # neutral-dialect source of the kernel
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: list[tuple[str, str]]    # ("tensor", node), ("const", key) or ("workspace", ""), in parameter order
    node: str                      # the graph node it implements
    layers: list[str]              # the spec layers it implements
    flops: int = 0
    workspace: int = 0             # float32 elements of scratch it needs (split-K partial sums)
    schedules: int = 1             # candidate schedules of its node, for an autotuner (conv/linear)
    schedule: object = None        # the templates.Schedule it was generated with (conv/linear)

    def rename(self, kernel: str) -> None:
        """Give the kernel another name (names must be unique within one module)."""
        self.body = self.body.replace(f"void {self.kernel}(", f"void {kernel}(", 1)
        self.kernel = kernel


@dataclass
class Program:
    name: str
    launches: list[Launch]
    constants: dict[str, np.ndarray]
    tensors: dict[str, tuple[int, int, tuple[int, ...]]]  # node -> (offset, size, NCHW shape), float32 elements
    arena_size: int
    inputs: list[str]
    outputs: list[str]
    workspace_size: int = 0        # float32 elements, shared by the launches that need scratch

    def source(self, dialect: Dialect, launch: Launch | None = None) -> str:
        """One kernel's file, or every kernel of the program in one translation unit."""
        bodies = [launch.body] if launch else [l.body for l in self.launches]
        return dialect.render("\n".join(bodies))


def lower(g: nx.DiGraph, picks: dict[str, int] | None = None) -> Program:
    """`picks`: per conv/linear node, which of its candidate schedules to use (an autotuner's
    choice, see backends/cuda_backend.py); by default the first, a heuristic."""
    seen: dict[str, int] = {}
    launches, constants = [], {}
    for node in [n for n in g.graph["order"] if "alias_of" not in g.nodes[n]]:  # aliases need no kernel
        for launch in lower_node(g, node, constants, (picks or {}).get(node, 0)):
            base = launch.kernel
            seen[base] = seen.get(base, 0) + 1
            if seen[base] > 1:  # same computation on another layer: names must stay unique in a module
                launch.rename(f"{base}_{seen[base]}")
            launches.append(launch)
    tensors = {n: (g.nodes[n]["offset"], g.nodes[n]["size"], tuple(g.nodes[n]["shape"]))
               for n in [*g.graph["inputs"], *g.graph["order"]]}
    return Program(g.graph["name"], launches, constants, tensors, g.graph["arena_size"],
                   list(g.graph["inputs"]), list(g.graph["outputs"]),
                   workspace_size=max((l.workspace for l in launches), default=0))


class _NodeLowering:
    """Helpers for lowering one node: its constants and its launches."""

    def __init__(self, g: nx.DiGraph, node: str, constants: dict):
        self.node, self.attrs, self.constants = node, g.nodes[node], constants
        self.inputs = [("tensor", i) for i in self.attrs["inputs"]]
        self.output = ("tensor", node)

    def const(self, name: str, value: np.ndarray) -> tuple[str, str]:
        key = f"{self.node}:{name}"
        self.constants[key] = np.ascontiguousarray(value, dtype=np.float32)
        return ("const", key)

    def launch(self, kernel: str, args: list, template, **params) -> Launch:
        body, grid, block = template(kernel, **params)
        return Launch(kernel, body, grid, block, args, self.node, list(self.attrs["layers"]),
                      int(self.attrs.get("flops", 0)))

    def simple(self, kernel: str, template, consts: list = (), **params) -> list[Launch]:
        """One launch reading the node's inputs (and constants), writing its output."""
        return [self.launch(kernel, [*self.inputs, *consts, self.output], template, **params)]


def _param(ref: tuple[str, str]) -> str:
    """The kernel parameter declaration of a constant: its name is the part after the colon."""
    return f"GLOBAL const float* RESTRICT {ref[1].rsplit(':', 1)[1]}"


def lower_node(g: nx.DiGraph, node: str, constants: dict, pick: int = 0) -> list[Launch]:
    """The launches of one node; `pick` selects a conv/linear node's schedule, one of the
    `Launch.schedules` candidates of `templates.schedules` (0: the default heuristic)."""
    low = _NodeLowering(g, node, constants)
    attrs, spec = low.attrs, low.attrs["spec"]
    ins = [g.nodes[i]["shape"] for i in attrs["inputs"]]
    out = attrs["shape"]
    total = _numel(out)
    if isinstance(spec, (ops.Conv2d, ops.Linear)):
        return _lower_gemm_like(low, spec, ins[0], out, pick)
    # elementwise nodes carry activations and unfolded batch norms (scale + shift) after them
    steps = attrs.get("epilogue", [])
    then = "".join("\n" + line for line in to_c(steps, []))
    suffix = "_" + label(steps).replace("+", "_") if steps else ""
    norms = [low.const(f"{name}{j}", array) for j, pair_ in enumerate(scale_shifts(steps))
             for name, array in zip("st", pair_)]
    per_channel = dict(channels=out[1], spatial=_numel(out[2:]))  # `k` in the kernel is the channel
    if isinstance(spec, ops.BatchNorm2d):
        scale, shift = ops.batch_norm_scale_shift(attrs["weights"], spec.eps)
        consts = [low.const("scale", scale), low.const("shift", shift)] + norms
        return low.simple(f"batchnorm{suffix}_{_sample_dims(out)}", T.pointwise, consts, total=total, inputs=["x0"],
                          extra_args=[_param(c) for c in consts], expr="v = x0[idx] * scale[k] + shift[k];" + then,
                          **per_channel)
    if isinstance(spec, ops.Activation):
        return low.simple(f"{spec.label}{suffix}_{_sample_dims(out)}", T.pointwise, norms, total=total, inputs=["x0"],
                          extra_args=[_param(c) for c in norms], expr=f"v = x0[idx];\nv = {spec.c_expr('v')};" + then,
                          **per_channel)
    if isinstance(spec, (ops.Flatten, ops.Dropout)):  # NCHW flatten is a plain copy
        return low.simple(f"copy{suffix}_{_sample_dims(out)}", T.pointwise, norms, total=total, inputs=["x0"],
                          extra_args=[_param(c) for c in norms], expr="v = x0[idx];" + then,
                          channels=out[1], spatial=_numel(out[2:]))
    if isinstance(spec, ops.Add):
        names = [f"x{i}" for i in range(len(ins))]
        return low.simple(f"add{len(ins)}{suffix}_{_sample_dims(out)}", T.pointwise, norms, total=total, inputs=names,
                          extra_args=[_param(c) for c in norms],
                          expr="v = " + " + ".join(f"{n}[idx]" for n in names) + ";" + then, **per_channel)
    if isinstance(spec, (ops.MaxPool2d, ops.AvgPool2d)):
        (kh, kw), (sh, sw), (ph, pw) = spec.geometry()
        kind = "max" if isinstance(spec, ops.MaxPool2d) else "avg"
        n, c, h, w = ins[0]
        return low.simple(f"{kind}pool{kh}x{kw}s{sh}_{_sample_dims(out)}", T.pool, kind=kind, n=n, c=c, h=h, w=w,
                          p=out[2], q=out[3], kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw,
                          count_include_pad=getattr(spec, "count_include_pad", True))
    if isinstance(spec, ops.GlobalAvgPool2d):
        n, c, h, w = ins[0]
        return low.simple(f"global_avgpool_{c}x{h}x{w}", T.reduce_rows, kind="mean", outer=n * c, length=h * w,
                          inner=1)
    if isinstance(spec, ops.Softmax):
        axis = spec.axis % len(out)
        return low.simple(f"softmax_axis{axis}_{_sample_dims(out)}", T.reduce_rows, kind="softmax",
                          outer=_numel(out[:axis]), length=out[axis], inner=_numel(out[axis + 1:]))
    if isinstance(spec, ops.Concat):
        return low.simple(f"concat{len(ins)}_{_sample_dims(out)}", T.concat, n=out[0], channels=[s[1] for s in ins],
                          spatial=_numel(out[2:]))
    if isinstance(spec, ops.Upsample2d):
        sh, sw = pair(spec.scale_factor)
        n, c, h, w = ins[0]
        return low.simple(f"upsample{sh}x{sw}_{_sample_dims(out)}", T.upsample_nearest, n=n, c=c, h=h, w=w, sh=sh, sw=sw)
    raise NotImplementedError(f"no kernel for op {attrs['op']}")


def _lower_gemm_like(low: _NodeLowering, spec, x_shape, out, pick: int = 0) -> list[Launch]:
    """conv2d (dense, grouped, 1x1, depthwise) and linear, with bias, activation, the epilogue
    (residual adds, more activations) and a fused pool applied before the store."""
    weights = low.attrs["weights"]
    bias = weights.get("bias")
    steps = low.attrs.get("epilogue", [])
    residuals = [f"r{i}" for i in range(residual_count(steps))]
    epilogue = "\n".join((["v += b[k];"] if bias is not None else []) +
                         ([f"v = {spec.activation.c_expr('v')};"] if spec.activation is not None else []) +
                         to_c(steps, residuals))
    own_inputs = low.inputs[:len(low.inputs) - len(residuals)]
    # after the residual inputs come the scale/shift constants of unfolded batch norms, if any
    norms = [low.const(f"{name}{j}", array) for j, pair_ in enumerate(scale_shifts(steps))
             for name, array in zip("st", pair_)]
    residual_args = low.inputs[len(own_inputs):] + norms
    residual_params = [f"GLOBAL const float* RESTRICT {r}" for r in residuals] + [_param(c) for c in norms]
    tags = (["bias"] if bias is not None else []) + ([spec.activation.label] if spec.activation else []) \
        + ([label(steps).replace("+", "_")] if steps else [])
    tags = "".join(f"_{t}" for t in tags)
    if isinstance(spec, ops.Linear):
        (n, f), k = x_shape, spec.out_features
        w = weights["weight"].T[None]  # (1, F, out)
        geometry = dict(n=n, c=f, h=1, w=1, k=k, p=1, q=1, kh=1, kw=1, sh=1, sw=1, pt=0, pl=0, dh=1, dw=1, groups=1)
        name = f"linear{tags}_{f}x{k}"
    else:
        n, c, h, w_ = x_shape
        (kh, kw), (sh, sw), (dh, dw) = pair(spec.kernel_size), pair(spec.stride), pair(spec.dilation)
        top, _, left, _ = spec.pads()
        k, groups = spec.out_channels, spec.groups
        depthwise = spec.is_depthwise(c)
        name = f"conv{kh}x{kw}s{sh}{'_dw' if depthwise else ''}{tags}_{k}x{out[2]}x{out[3]}"
        if depthwise:
            consts = [low.const("w", weights["weight"].reshape(c, kh * kw))]
            consts += [low.const("b", bias)] if bias is not None else []
            return [low.launch(name, [*own_inputs, *consts, *residual_args, low.output], T.depthwise, n=n, c=c, h=h,
                               w=w_, p=out[2], q=out[3], kh=kh, kw=kw, sh=sh, sw=sw, pt=top, pl=left, dh=dh, dw=dw,
                               extra_args=[_param(x) for x in consts[1:]] + residual_params, epilogue=epilogue)]
        w = weights["weight"].reshape(groups, k // groups, -1).transpose(0, 2, 1)  # (g, C/g*KH*KW, K/g)
        geometry = dict(n=n, c=c, h=h, w=w_, k=k, p=out[2], q=out[3], kh=kh, kw=kw, sh=sh, sw=sw, pt=top, pl=left,
                        dh=dh, dw=dw, groups=groups)
    w_ref = low.const("w", w)
    b_refs = [low.const("b", bias)] if bias is not None else []
    groups = geometry["groups"]
    m, kg = geometry["n"] * geometry["p"] * geometry["q"], geometry["k"] // groups
    pool = _fused_pool(low.attrs.get("pool"), out)
    if pool:  # the GEMM covers the pixels inside windows; the output is the pooled tensor
        geometry.update(p=low.attrs["conv_shape"][2], q=low.attrs["conv_shape"][3])
        m = geometry["n"] * pool.ph * pool.pw * pool.size
        name += f"_{pool.kind}pool{pool.kh}x{pool.kw}"
    r = geometry["c"] // groups * geometry["kh"] * geometry["kw"]
    options = T.schedules(m, kg, r, groups, rows_multiple=pool.size if pool else 1)
    tile, splits, chunk = options[pick].tile, options[pick].splits, options[pick].chunk
    if splits == 1:
        launches = [low.launch(name, [*own_inputs, w_ref, *b_refs, *residual_args, low.output], T.conv_gemm,
                               **geometry, extra_args=[_param(b) for b in b_refs] + residual_params,
                               epilogue=epilogue, tile=tile, pool=pool)]
    else:  # split-K: partial sums into the workspace, then one pass that adds them and applies the epilogue
        partial = low.launch(f"{name}_split{splits}", [*own_inputs, w_ref, ("workspace", "")], T.conv_gemm, **geometry,
                             extra_args=[], epilogue="", tile=tile, splits=splits, chunk=chunk)
        partial.workspace = splits * m * kg
        reduce = low.launch(f"{name}_reduce", [("workspace", ""), *b_refs, *residual_args, low.output], T.split_reduce,
                            n=geometry["n"], k=kg, pq=geometry["p"] * geometry["q"], splits=splits,
                            extra_args=[_param(b) for b in b_refs] + residual_params, epilogue=epilogue)
        reduce.flops = 0
        launches = [partial, reduce]
    for launch in launches:
        launch.schedules, launch.schedule = len(options), options[pick]
    return launches


def _fused_pool(spec, out) -> T.FusedPool | None:
    if spec is None:
        return None
    kh, kw = pair(spec.kernel_size)
    return T.FusedPool("max" if isinstance(spec, ops.MaxPool2d) else "avg", kh, kw, out[2], out[3])


def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _sample_dims(shape) -> str:
    """(N, C, H, W) -> "CxHxW", for kernel names."""
    return "x".join(map(str, shape[1:]))
