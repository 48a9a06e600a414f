"""Lowering: the optimized, memory-planned graph becomes a `Program`, an ordered list of kernel
launches over one arena. Every backend but NumPy executes a Program.

A launch's arguments are tensors (arena ranges, by node) or constants (weights rearranged for the
kernel, e.g. conv weights as a (groups, C/g*KH*KW, K/g) GEMM operand). Sources are in the
neutral dialect; `Program.source(dialect)` renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .. import ops
from ..ops.base import pair
from . import templates as T
from .dialects import Dialect


@dataclass
class Launch:
    kernel: str                    # unique name, says what it computes: conv3x3s1_bias_relu_64x56x56
    body: str                      # neutral-dialect source of the kernel
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: list[tuple[str, str]]    # ("tensor", node) or ("const", key), in parameter order
    node: str                      # the graph node it implements
    layers: list[str]              # the spec layers it implements
    flops: int = 0


@dataclass
class Program:
    name: str
    launches: list[Launch]
    constants: dict[str, np.ndarray]
    tensors: dict[str, tuple[int, int, tuple[int, ...]]]  # node -> (offset, size, NCHW shape), float32 elements
    arena_size: int
    inputs: list[str]
    outputs: list[str]
    extra: dict = field(default_factory=dict)

    def source(self, dialect: Dialect, launch: Launch | None = None) -> str:
        """One kernel's file, or every kernel of the program in one translation unit."""
        bodies = [launch.body] if launch else [l.body for l in self.launches]
        return dialect.render("\n".join(bodies))


def lower(g: nx.DiGraph) -> Program:
    names: dict[str, int] = {}
    launches, constants = [], {}
    for node in g.graph["order"]:
        attrs = g.nodes[node]
        launch = _lower_node(g, node, attrs, constants)
        base = launch.kernel
        names[base] = names.get(base, 0) + 1
        if names[base] > 1:
            launch.kernel = f"{base}_{names[base]}"
            launch.body = launch.body.replace(f"void {base}(", f"void {launch.kernel}(", 1)
        launches.append(launch)
    tensors = {n: (g.nodes[n]["offset"], g.nodes[n]["size"], tuple(g.nodes[n]["shape"]))
               for n in [*g.graph["inputs"], *g.graph["order"]]}
    return Program(g.graph["name"], launches, constants, tensors, g.graph["arena_size"],
                   list(g.graph["inputs"]), list(g.graph["outputs"]))


def _lower_node(g: nx.DiGraph, node: str, attrs: dict, constants: dict) -> Launch:
    spec = attrs["spec"]
    ins = [g.nodes[i]["shape"] for i in attrs["inputs"]]
    out = attrs["shape"]
    args = [("tensor", i) for i in attrs["inputs"]]

    def const(suffix: str, value: np.ndarray) -> str:
        key = f"{node}:{suffix}"
        constants[key] = np.ascontiguousarray(value, dtype=np.float32)
        args.append(("const", key))
        return f"GLOBAL const float* RESTRICT {suffix}"

    def launch(kernel: str, template, **params) -> Launch:
        body, grid, block = template(kernel, **params)
        return Launch(kernel, body, grid, block, args + [("tensor", node)], node, list(attrs["layers"]),
                      int(attrs.get("flops", 0)))

    if isinstance(spec, (ops.Conv2d, ops.Linear)):
        return _lower_gemm_like(spec, attrs, ins[0], out, const, launch)
    if isinstance(spec, ops.BatchNorm2d):
        scale, shift = ops.batch_norm_scale_shift(attrs["weights"], spec.eps)
        extra = [const("scale", scale), const("shift", shift)]
        return launch(f"batchnorm_{_dims(out)}", T.pointwise, total=_numel(out), inputs=["x0"], extra_args=extra, expr="v = x0[idx] * scale[k] + shift[k];",
            channels=out[1], spatial=_numel(out[2:]))
    if isinstance(spec, ops.Activation):
        return launch(f"{spec.label}_{_dims(out)}", T.pointwise, total=_numel(out), inputs=["x0"], extra_args=[], expr=f"v = x0[idx];\nv = {spec.c_expr('v')};")
    if isinstance(spec, (ops.Flatten, ops.Dropout)):
        return launch(f"copy_{_dims(out)}", T.pointwise, total=_numel(out), inputs=["x0"], extra_args=[],
                                                        expr="v = x0[idx];")
    if isinstance(spec, ops.Add):
        names = [f"x{i}" for i in range(len(ins))]
        return launch(f"add{len(ins)}_{_dims(out)}", T.pointwise, total=_numel(out), inputs=names, extra_args=[], expr="v = " + " + ".join(f"{n}[idx]" for n in names) + ";")
    if isinstance(spec, (ops.MaxPool2d, ops.AvgPool2d)):
        (kh, kw), (sh, sw), (ph, pw) = spec.geometry()
        kind = "max" if isinstance(spec, ops.MaxPool2d) else "avg"
        n, c, h, w = ins[0]
        return launch(f"{kind}pool{kh}x{kw}s{sh}_{_dims(out)}", T.pool, kind=kind, n=n, c=c, h=h, w=w, p=out[2], q=out[3], kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw,
            count_include_pad=getattr(spec, "count_include_pad", True))
    if isinstance(spec, ops.GlobalAvgPool2d):
        n, c, h, w = ins[0]
        return launch(f"global_avgpool_{c}x{h}x{w}", T.reduce_rows, kind="mean", outer=n * c, length=h * w, inner=1)
    if isinstance(spec, ops.Softmax):
        axis = spec.axis % len(out)
        return launch(f"softmax_axis{axis}_{_dims(out)}", T.reduce_rows, kind="softmax", outer=_numel(out[:axis]), length=out[axis], inner=_numel(out[axis + 1:]))
    if isinstance(spec, ops.Concat):
        return launch(f"concat{len(ins)}_{_dims(out)}", T.concat, n=out[0], channels=[s[1] for s in ins], spatial=_numel(out[2:]))
    if isinstance(spec, ops.Upsample2d):
        sh, sw = pair(spec.scale_factor)
        n, c, h, w = ins[0]
        return launch(f"upsample{sh}x{sw}_{_dims(out)}", T.upsample_nearest, n=n, c=c, h=h, w=w, sh=sh, sw=sw)
    raise NotImplementedError(f"no kernel for op {attrs['op']}")


def _lower_gemm_like(spec, attrs, x_shape, out, const, launch) -> Launch:
    """conv2d (dense, grouped, 1x1, depthwise) and linear, with bias and activation fused."""
    weights = attrs["weights"]
    epilogue = []
    bias = weights.get("bias")
    if spec.activation is not None:
        epilogue.append(f"v = {spec.activation.c_expr('v')};")
    tags = (["bias"] if bias is not None else []) + ([spec.activation.label] if spec.activation else [])
    if isinstance(spec, ops.Linear):
        n, f = x_shape
        const("w", weights["weight"].T[None])  # (1, F, out)
        extra = [const("b", bias)] if bias is not None else []
        geometry = dict(n=n, c=f, h=1, w=1, k=spec.out_features, p=1, q=1, kh=1, kw=1, sh=1, sw=1, pt=0, pl=0,
                        dh=1, dw=1, groups=1)
        name = f"linear_{'_'.join(tags) + '_' if tags else ''}{f}x{spec.out_features}"
    else:
        n, c, h, w = x_shape
        (kh, kw), (sh, sw), (dh, dw) = pair(spec.kernel_size), pair(spec.stride), pair(spec.dilation)
        top, _, left, _ = spec.pads()
        k, groups = spec.out_channels, spec.groups
        name = f"conv{kh}x{kw}s{sh}{'_dw' if spec.is_depthwise(c) else ''}_{'_'.join(tags) + '_' if tags else ''}" \
               f"{k}x{out[2]}x{out[3]}"
        if spec.is_depthwise(c):
            const("w", weights["weight"].reshape(c, kh * kw))
            extra = [const("b", bias)] if bias is not None else []
            epi = "\n".join((["v += b[k];"] if bias is not None else []) + epilogue)
            return launch(name, T.depthwise, n=n, c=c, h=h, w=w, p=out[2], q=out[3], kh=kh, kw=kw, sh=sh, sw=sw,
                                            pt=top, pl=left, dh=dh, dw=dw, extra_args=extra, epilogue=epi)
        wt = weights["weight"].reshape(groups, k // groups, -1).transpose(0, 2, 1)  # (g, C/g*KH*KW, K/g)
        const("w", wt)
        extra = [const("b", bias)] if bias is not None else []
        geometry = dict(n=n, c=c, h=h, w=w, k=k, p=out[2], q=out[3], kh=kh, kw=kw, sh=sh, sw=sw, pt=top, pl=left,
                        dh=dh, dw=dw, groups=groups)
    epi = "\n".join((["v += b[k];"] if bias is not None else []) + epilogue)
    m = geometry["n"] * geometry["p"] * geometry["q"]
    tile = T.choose_tile(m, geometry["k"] // geometry["groups"])
    return launch(name, T.conv_gemm, **geometry, extra_args=extra, epilogue=epi, tile=tile)


def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _dims(shape) -> str:
    return "x".join(map(str, shape[1:]))
