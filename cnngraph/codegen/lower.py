"""Lowering: the optimized, memory-planned graph becomes a `Program`, an ordered list of kernel
launches over one arena. Every backend but NumPy executes a Program.

A launch's arguments are tensors (arena ranges, by node) or constants (weights rearranged for the
kernel, e.g. conv weights as a (groups, C/g*KH*KW, K/g) GEMM operand). Sources are in the
neutral dialect; `Program.source(dialect)` renders them, their tensors (and GEMM weights) stored
at the program's precision: 16-bit patterns at fp16/bf16 (see cnngraph/precision.py). A tensor's
elements lie in NCHW order, or NHWC where the plan stores it channels-last (`Program.layouts`,
passes/assign_layout.py).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..errors import ResourceError
from ..geometry import ConvGeometry
from ..graph import stored_shape
from ..ops.arithmetic import broadcast_index
from ..ops.epilogue import label, scale_shifts, to_c
from ..passes.assign_layout import NHWC
from ..passes.infer_shapes import MAX_ELEMENTS
from ..precision import HALF_STORAGE, copy_width, round_tf32, to_storage
from . import templates as T
from .dialects import Dialect
from .schedules import MmaTile, Schedule, schedules


@dataclass
class Launch:
    kernel: str                    # unique name, says what it computes: conv3x3s1_bias_relu_64x56x56
    body: str                      # neutral-dialect source of the kernel
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: list[tuple[str, str]]    # ("tensor", node), ("const", key), ("workspace", "") or ("counters", ""), in order
    node: str                      # the graph node it implements
    layers: list[str]              # the spec layers it implements
    flops: int = 0
    workspace: int = 0             # float32 elements of scratch it needs (split-K partial sums)
    counters: int = 0              # int32 split-K tile counters it needs (zero before and after it runs)
    schedules: int = 1             # candidate schedules of its node, for an autotuner (conv/linear)
    schedule: Schedule | None = None  # the schedule it was generated with (conv/linear)

    @property
    def shared_bytes(self) -> int:
        """The dynamic shared memory the kernel carves its arrays from (`DYNAMIC_SHARED`), given at
        launch; 0 when it declares its shared arrays statically (at most 48 KB)."""
        found = re.search(r"\bDYNAMIC_SHARED\((\d+)\)", self.body)
        return int(found[1]) if found else 0

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
    counters_size: int = 0         # int32 counters, zero between launches, shared likewise
    precision: str = "fp32"        # the network's; tensors are 16-bit elements at fp16/bf16
    layouts: dict[str, str] = dataclasses.field(default_factory=dict)  # node -> "NHWC": stored channels-last
    padded_channels: dict[str, int] = dataclasses.field(default_factory=dict)  # NHWC node -> channels per pixel

    def layout(self, node: str) -> str:
        """How a tensor's elements lie in the arena: "NCHW" (the shape's order) or "NHWC"."""
        return self.layouts.get(node, "NCHW")

    def source(self, dialect: Dialect, launch: Launch | None = None) -> str:
        """One kernel's file, or every kernel of the program in one translation unit."""
        return dialect.render(launch.body if launch else self.body(), storage=self.precision)

    def body(self) -> str:
        """Every kernel's text, in launch order: what `source` renders (`__LINE__` counts its lines)."""
        return "\n".join(launch.body for launch in self.launches)


def lower(g: nx.DiGraph, picks: dict[str, int] | None = None) -> Program:
    """`picks`: per conv/linear node, which of its candidate schedules to use (an autotuner's
    choice, see codegen/autotune.py); by default the first, a heuristic."""
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
                   workspace_size=max((l.workspace for l in launches), default=0),
                   counters_size=max((l.counters for l in launches), default=0), precision=storage_of(g),
                   layouts={n: g.nodes[n]["layout"] for n in tensors if "layout" in g.nodes[n]},
                   padded_channels={n: g.nodes[n]["padded_channels"] for n in tensors
                                    if "padded_channels" in g.nodes[n]})


def lower_node(g: nx.DiGraph, node: str, constants: dict, pick: int = 0) -> list[Launch]:
    """The launches of one node, as its op lowers itself; `pick` selects a conv/linear node's
    schedule, one of the `Launch.schedules` candidates of `schedules.schedules` (0: the default)."""
    low = NodeLowering(g, node, constants, pick)
    launches = low.compute.spec.lower(low)
    assert not low.attrs.get("tf32_stored") or any(ROUNDED_STORE in l.body for l in launches), \
        f"{node} is read as stored rounded to TF32, but its kernels do not round it"
    return launches


ROUNDED_STORE = "v = TF32(v);"  # the last step of the epilogue of a tensor stored rounded (`tf32_stored`)


@dataclass
class EpilogueCode:
    """A node's epilogue as a kernel needs it: the C statements on `v`, and the residual tensors and
    scale/shift constants it reads, as launch arguments and as parameter declarations."""
    code: str
    args: list
    params: list[str]
    tags: str          # for the kernel name: "_bias_relu_add"


class NodeLowering:
    """What an op's `lower` works with: the node (its compute, shapes, weights), and helpers that
    make constants and launches. Ops call `elementwise`, `gemm`, or `simple` with a template."""

    def __init__(self, g: nx.DiGraph, node: str, constants: dict, pick: int = 0):
        self.node, self.attrs, self.constants, self.pick = node, g.nodes[node], constants, pick
        self.compute = self.attrs["compute"]
        self.inputs = [("tensor", i) for i in self.attrs["inputs"]]
        self.in_shapes = [tuple(g.nodes[i]["shape"]) for i in self.attrs["inputs"]]
        self.stored_in_shapes = [stored_shape(g, i) for i in self.attrs["inputs"]]  # channels padded as stored
        self.shape = tuple(self.attrs["shape"])  # (N, ...), the node's output
        self.weights = self.attrs.get("weights", {})
        self.output = ("tensor", node)
        self.storage = storage_of(g)
        # (first input, output) stored channels-last (NHWC), see passes/assign_layout.py
        self.channels_last = (any(g.nodes[i].get("layout") == NHWC for i in self.attrs["inputs"][:1]),
                              self.attrs.get("layout") == NHWC)
        # the first input is stored rounded to TF32 (passes/assign_precision.py): no need to round it again
        self.rounded_input = any(g.nodes[i].get("tf32_stored", False) for i in self.attrs["inputs"][:1])

    @property
    def layout_suffix(self) -> str:
        """The kernel-name suffix that says which of its input and output are NHWC."""
        suffixes = {(True, True): "_nhwc", (True, False): "_nhwc_in", (False, True): "_nhwc_out"}
        return suffixes.get(self.channels_last, "")

    @property
    def own_inputs(self) -> list:
        """The op's own inputs; residual inputs of the epilogue come after them."""
        return self.inputs[:len(self.inputs) - self.compute.residuals]

    def const(self, name: str, value: np.ndarray) -> tuple[str, str]:
        key = f"{self.node}:{name}"
        self.constants[key] = np.ascontiguousarray(value, dtype=np.float32)
        return ("const", key)

    def stored_const(self, name: str, value: np.ndarray) -> tuple[str, str]:
        """A constant the kernel reads as a stored tensor (`ACT`, through LOAD): the GEMM weights,
        16-bit patterns at fp16/bf16."""
        if self.storage not in HALF_STORAGE:
            return self.const(name, value)
        key = f"{self.node}:{name}"
        self.constants[key] = to_storage(value, self.storage)
        return ("const", key)

    def launch(self, kernel: str, args: list, template, **params) -> Launch:
        if self.storage in HALF_STORAGE:  # every kernel differs by its storage: the name says which
            kernel += f"_{self.storage}"
        body, grid, block = template(kernel, **params)
        check_grid(grid, self.node)
        return Launch(kernel, body, grid, block, args, self.node, list(self.attrs["layers"]),
                      int(self.attrs.get("flops", 0)))

    def simple(self, kernel: str, template, consts: list = (), **params) -> list[Launch]:
        """One launch reading the node's inputs (and constants), writing its output."""
        return [self.launch(kernel, [*self.inputs, *consts, self.output], template, **params)]

    @staticmethod
    def param(ref: tuple[str, str]) -> str:
        """The kernel parameter declaration of a constant."""
        return _param(ref)

    def sample_dims(self) -> str:
        """The output's per-sample dims for kernel names: (N, C, H, W) -> "CxHxW"."""
        return "x".join(map(str, self.shape[1:]))

    def _norm_constants(self) -> list:
        """The scale/shift constants of the epilogue's unfolded batch norms, s0, t0, s1, ..."""
        return [self.const(f"{name}{j}", array) for j, step in enumerate(scale_shifts(self.compute.epilogue))
                for name, array in (("s", step.scale), ("t", step.shift))]

    def elementwise(self, kind: str, expr: str, consts: list = (), inputs: int = 1, reads: list | None = None,
                    epilogue: bool = True) -> list[Launch]:
        """One pointwise kernel: `expr` sets `v` from x0[idx], x1[idx], ... (and `k`, the channel of
        idx), then the node's epilogue; named `<kind>[_<epilogue>]_<CxHxW>`. x0, x1, ... are the
        node's first `inputs` inputs, or `reads`: the tensors one launch of several reads (of an add
        of more inputs than one kernel takes); only the last applies the `epilogue`."""
        steps = self.compute.epilogue if epilogue else []
        rounded = epilogue and self.attrs.get("tf32_stored", False)  # `gemm_epilogue`
        consts = [*consts, *(self._norm_constants() if epilogue else [])]
        reads = self.inputs[:inputs] if reads is None else reads
        then = "".join("\n" + line for line in to_c(steps, []) + ([ROUNDED_STORE] if rounded else []))
        suffix = "_" + label(steps).replace("+", "_") if steps else ""
        suffix += "_round" if rounded else ""
        nhwc = self.channels_last[1]  # its full-size inputs' layout too (passes/assign_layout.py)
        return [self.launch(f"{kind}{suffix}_{self.sample_dims()}{'_nhwc' if nhwc else ''}",
                            [*reads, *consts, self.output], T.pointwise, total=_numel(self.shape),
                            inputs=[f"x{i}" for i in range(len(reads))], extra_args=[_param(c) for c in consts],
                            expr=expr + then, channels=self.shape[1], spatial=_numel(self.shape[2:]),
                            channels_last=nhwc)]

    def _one_pixel_each(self, geo: ConvGeometry) -> bool:
        """A tensor-core GEMM whose input and output hold one pixel per sample (a linear layer's
        (N, C), a squeeze-excitation's (N, C, 1, 1)): whatever their layout, their bytes are those
        of NHWC tensors, so its kernel reads them as such, by cp.async (ungated, unpooled, its
        channels a whole number of 4-byte copies: `reads_channels_last`)."""
        c = self.compute
        one_pixel = geo.h * geo.w == 1 and geo.p * geo.q == 1
        return (one_pixel and c.tensor_cores and not c.gated and c.pool is None
                and copy_width(self.stored_in_shapes[0][1] // geo.groups, c.precision) > 0)

    def operand_index(self, i: int) -> str:
        """The C index into input `i` of the element `idx` of an elementwise op's output, which it
        may broadcast to; NHWC when the output is (a broadcast operand then is layout-free)."""
        shapes = (self.in_shapes[i], self.shape)
        if self.channels_last[1]:
            shapes = tuple((s[0], *s[2:], s[1]) for s in shapes)
        return broadcast_index(*shapes)

    def gemm_epilogue(self, bias: np.ndarray | None, activation) -> EpilogueCode:
        """A conv/linear's epilogue: its bias, its `activation` field, the fused steps, then the
        rounding to TF32 of an output stored rounded (`tf32_stored`)."""
        steps, rounded = self.compute.epilogue, self.attrs.get("tf32_stored", False)
        residuals = [f"r{i}" for i in range(self.compute.residuals)]
        code = "\n".join((["v += b[k];"] if bias is not None else []) +
                         ([f"v = {activation.c_expr('v')};"] if activation is not None else []) +
                         to_c(steps, residuals) + ([ROUNDED_STORE] if rounded else []))
        norms = self._norm_constants()
        tags = (["bias"] if bias is not None else []) + ([activation.label] if activation else []) \
            + ([label(steps).replace("+", "_")] if steps else []) + (["round"] if rounded else [])
        return EpilogueCode(code, self.inputs[len(self.own_inputs):] + norms,
                            [f"GLOBAL const ACT* RESTRICT {r}" for r in residuals] + [_param(c) for c in norms],
                            "".join(f"_{t}" for t in tags))

    def gemm(self, name: str, geo: ConvGeometry, matrix: np.ndarray, bias: np.ndarray | None,
             epilogue: EpilogueCode) -> list[Launch]:
        """A conv/linear as an implicit GEMM over `matrix` (groups, C/g*KH*KW, K/g), with the node's
        epilogue and fused pool; split-K (inside the kernel) when its schedule says so. At tf32 the weights are rounded
        here, once, and the kernel rounds its inputs, on the tensor cores (`conv_mma`). At
        fp16/bf16 the weights are stored in 16 bits, as the activations are, and the products run
        on the tensor cores (`conv_mma16`); at fp32 on the CUDA cores (`conv_gemm`). The
        tensor-core kernels read and write NHWC tensors too (`channels_last`), their weight rows
        then in (ky, kx, channel) order."""
        if self._one_pixel_each(geo):  # NHWC is NCHW byte for byte: copied 16 bytes at a time too
            self.channels_last = (True, True)
        tf32 = self.compute.precision == "tf32"
        b_refs = [self.const("b", bias)] if bias is not None else []
        kg = geo.kg
        pool = _fused_pool(self.compute.pool, self.shape)
        if pool:  # the GEMM covers the pixels inside windows; the output is the pooled tensor
            geo = dataclasses.replace(geo, p=self.compute.pool.conv_shape[2], q=self.compute.pool.conv_shape[3])
            name += f"_{pool.kind}pool{pool.kh}x{pool.kw}"
        m = T.gemm_rows(geo, pool)
        half, gated = self.compute.precision in HALF_STORAGE, self.compute.gated
        copied = T.weight_vector(half, gated, self.channels_last[0])  # 0: a tensor-core kernel loads through registers
        options = schedules(m, kg, geo.reduction, geo.groups, rows_multiple=pool.size if pool else 1,
                            tensor_cores=self.compute.tensor_cores, register_staged=not copied, half=half)
        out_pitch = self.attrs.get("padded_channels", 0)  # an NHWC output padded to whole 16-byte pixels
        if out_pitch:  # stored with its padding in the epilogue; split-K's partial sums have none
            options = [o for o in options if o.splits == 1]
        chosen = options[self.pick]
        if isinstance(chosen.tile, MmaTile):
            template, variant = T.conv_mma, {"channels_last": self.channels_last, "pool": pool, "out_pitch": out_pitch}
            if half:
                template, variant["bf16"] = T.conv_mma16, self.compute.precision == "bf16"
            else:
                variant["rounded_input"] = self.rounded_input
            matrix = T.conv_mma_weights(matrix, geo, self.channels_last[0], copied)
        else:
            template, variant = T.conv_gemm, {"pool": pool}
        assert template is not T.conv_gemm or (self.compute.precision == "fp32" and not any(self.channels_last)), \
            "conv_gemm multiplies float32 values, read and written NCHW"
        w_ref = self.stored_const("w", round_tf32(matrix) if tf32 else matrix)
        table = T.tap_table(geo, self.channels_last[0])  # read after the weights (int32 bits in a float32 constant)
        w_refs = [w_ref, *([self.const("taps", table.view(np.float32))] if table is not None else [])]
        own, out = self.own_inputs, self.output  # gated: own = [x, gate]
        if gated:
            name = "gated_" + name
        if tf32:
            name += "_tf32"
        name += self.layout_suffix
        split = chosen.splits > 1  # partial sums in the workspace, counted per output tile
        if split:
            name += f"_split{chosen.splits}"
        scratch = [("workspace", ""), ("counters", "")] if split else []
        launch = self.launch(name, [*own, *w_refs, *scratch, *b_refs, *epilogue.args, out], template, geo=geo,
                             extra_args=[_param(b) for b in b_refs] + epilogue.params, epilogue=epilogue.code,
                             tile=chosen.tile, gated=gated, splits=chosen.splits, chunk=chosen.chunk, **variant)
        if split:
            launch.workspace, launch.counters = chosen.splits * m * kg, launch.grid[0] * launch.grid[1]
            # a reduction is split only when the output is under 132 tiles (`default_splits`), so the
            # partial sums (at most 32 splits of 128 x 128 tiles) stay far below a tensor's limit
            assert launch.workspace <= MAX_ELEMENTS, (launch.node, launch.workspace)
        launch.schedules, launch.schedule = len(options), chosen
        return [launch]


MAX_GRID = (2 ** 31 - 1, 65535, 65535)  # blocks per launch in x, y, z (CUDA; OpenCL devices allow as many)


def check_grid(grid: tuple[int, int, int], node: str) -> None:
    """A launch must fit the device's grid: a conv with more than 65535 groups (blockIdx.z) or output
    channel tiles (blockIdx.y) is refused here, when its kernels are made, not by the driver."""
    for axis, blocks, limit in zip("xyz", grid, MAX_GRID):
        if blocks > limit:
            why = {"x": "output elements", "y": "output channel tiles", "z": "groups or reduction splits"}[axis]
            raise ResourceError(f"needs {blocks:,} blocks in grid {axis} ({why}) in one launch; CUDA allows "
                                f"{limit:,}: split the layer", layer=node)


def storage_of(g: nx.DiGraph) -> str:
    """The precision the graph's tensors are stored at (the network's; fp32 before one is given)."""
    return g.graph.get("precision", "fp32")


def _param(ref: tuple[str, str]) -> str:
    """The kernel parameter declaration of a constant: its name is the part after the colon."""
    return f"GLOBAL const float* RESTRICT {ref[1].rsplit(':', 1)[1]}"


def _fused_pool(step, out) -> T.FusedPool | None:
    if step is None:
        return None
    (kh, kw), _, _ = step.spec.geometry()
    return T.FusedPool("max" if step.spec.op == "max_pool2d" else "avg", kh, kw, out[2], out[3])


def _numel(shape) -> int:
    return int(np.prod(shape)) if len(shape) else 1
