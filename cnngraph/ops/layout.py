"""Ops that move channels or pixels without arithmetic: `slice` (a channel range, as `x[:, a:b]`,
`torch.split` and `chunk` give), `channel_shuffle` (ShuffleNet) and `pad` (F.pad: constant, reflect,
replicate; TensorFlow's asymmetric "SAME" padding before a conv)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..codegen import templates as T
from .base import KEEPS_LAYOUT, Example, Float32, Int64, Layer, NonNegativeInt, PositiveInt, fmt_shape, invalid
from .onnx_mapping import BATCH, Unsupported, attributes, nice, scalar, writing

INT64_END = 2**62  # an ONNX Slice end at least this large means "to the end" (PyTorch writes INT64_MAX)


def split(imp, node):
    """Split along channels: one slice layer per output."""
    x = imp.data(node)
    a = attributes(node)
    rank = len(imp.shapes[x]) + 1
    if a.get("axis", 0) % rank != 1:
        raise Unsupported(f"axis {a.get('axis', 0)}: only splitting along channels (axis 1) is supported")
    channels = imp.shapes[x][0]
    sizes = imp.numbers(node, 1, "split", optional=True) if imp.opset >= 13 else np.asarray(a.get("split", []))
    if sizes is None or sizes.size == 0:
        parts = len(node.output)
        sizes = [math.ceil(channels / parts)] * (parts - 1)
        sizes.append(channels - sum(sizes))
    sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
    if len(sizes) != len(node.output) or sum(sizes) != channels or min(sizes) < 1:
        raise Unsupported(f"split sizes {sizes} do not divide the {channels} channels into {len(node.output)} parts")
    start = 0
    for size, output in zip(sizes, node.output):
        if output:
            imp.add_layer(writing(node, output), {"op": "slice", "start": start, "end": start + size}, [x])
        start += size


def slice_(imp, node):
    """Slice along channels with step 1 (`x[:, a:b]`)."""
    x = imp.data(node)
    if imp.opset < 10:
        a = attributes(node)
        starts, ends, axes, steps = (np.asarray(a.get(k, [])) for k in ("starts", "ends", "axes", "steps"))
    else:
        starts, ends = imp.numbers(node, 1, "starts"), imp.numbers(node, 2, "ends")
        axes = imp.numbers(node, 3, "axes", optional=True)
        steps = imp.numbers(node, 4, "steps", optional=True)
    rank = len(imp.shapes[x]) + 1
    axes = list(range(len(starts.reshape(-1)))) if axes is None or axes.size == 0 else [int(v) % rank for v in axes.reshape(-1)]
    steps = [1] * len(axes) if steps is None or steps.size == 0 else [int(v) for v in steps.reshape(-1)]
    if axes != [1] or steps != [1] or starts.size != 1 or ends.size != 1:
        raise Unsupported(f"only a slice along channels (axis 1) with step 1 is supported, got axes {axes} "
                          f"and steps {steps}")
    start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
    imp.add_layer(node, {"op": "slice", "start": start, "end": None if end >= INT64_END else end}, [x])


class Slice(Layer):
    """A range of channels, `x[:, start:end]` with Python's rules (negative counts from the end,
    `end` null: to the end). A vector's features are its channels."""
    moves_data_only = True
    traits = frozenset({KEEPS_LAYOUT})
    op: Literal["slice"]
    start: Int64 = 0
    end: Int64 | None = None
    onnx_converters = {"Slice": slice_, "Split": split}
    examples = (Example({"start": 1, "end": 3}), Example({"start": -2}, inputs=((5, 4, 3),)),
                Example({"start": 2, "end": -1}, inputs=((7,),)))

    def channels(self, c: int) -> range:
        return range(c)[self.start:self.end]

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        taken = self.channels(shape[0])
        if not taken:
            end = "" if self.end is None else self.end
            raise self.shape_error(f"slice [{self.start}:{end}] of the {shape[0]} channels of {fmt_shape(shape)} "
                                   "is empty", field="start")
        return (len(taken), *shape[1:])

    def flops(self, in_shapes, out_shape):
        return 0

    def run_numpy(self, xs, params, scratch, out):
        taken = self.channels(xs[0].shape[-1])
        np.copyto(out, xs[0][..., taken.start:taken.stop])  # channels are the backend's last axis
        return out

    def lower(self, low):
        n, c = low.in_shapes[0][:2]
        first, nhwc = self.channels(c).start, low.channels_last[0]
        return low.simple(f"slice{first}_{low.sample_dims()}{low.layout_suffix}", T.channel_gather, n=n, c_in=c,
                          c_out=low.shape[1], spatial=math.prod(low.shape[2:]), source=f"k + {first}",
                          channels_last=nhwc)

    def to_onnx(self, ex, xs, out, shape):
        start, end = self.start, INT64_END if self.end is None else self.end
        ex.node(self.name, "Slice", [*xs, ex.const(f"{self.name}:starts", [start], "int64"),
                                     ex.const(f"{self.name}:ends", [end], "int64"),
                                     ex.const(f"{self.name}:axes", [1], "int64")], out, shape)

    def torch_reference(self, xs, weights):
        return xs[0][:, self.start:self.end]


def match_channel_shuffle(imp, reshape):
    """Reshape to (N, g, C/g, H, W), Transpose(0, 2, 1, 3, 4), Reshape to (N, C, H, W): torchvision's
    `channel_shuffle`. The sizes are read when the walk reaches the last node (they may come from
    shape arithmetic evaluated on the way)."""
    transpose = imp.only_consumer(reshape.output[0], "Transpose")
    if transpose is None or list(attributes(transpose).get("perm", [])) != [0, 2, 1, 3, 4]:
        return None
    back = imp.only_consumer(transpose.output[0], "Reshape")
    if back is None:
        return None

    def convert(imp, node):
        x = imp.data(reshape)
        split_to = list(imp.value(reshape, 1, "shape").reshape(-1))
        merged = list(imp.value(back, 1, "shape").reshape(-1))
        shape = imp.shapes[x]
        if len(shape) != 3 or len(split_to) != 5 or len(merged) != 4 or BATCH in split_to[1:] + merged[1:]:
            raise Unsupported("a Reshape/Transpose/Reshape that is not a channel shuffle of an (N,C,H,W) tensor")
        (c, h, w), groups = shape, int(split_to[1])
        if groups < 1 or c % groups or [c // groups if v == -1 else int(v) for v in split_to[2:]] != [c // groups, h, w] \
                or [int(v) for v in merged[1:]] not in ([c, h, w], [-1, h, w]):
            raise Unsupported(f"reshapes to {split_to} and {merged} are not a channel shuffle of {fmt_shape(shape)}")
        imp.add_layer(node, {"op": "channel_shuffle", "groups": groups}, [x])
    return [reshape, transpose, back], convert


class ChannelShuffle(Layer):
    """ShuffleNet's channel shuffle: channels seen as (groups, C/groups), transposed. Output channel
    i * groups + j is input channel j * (C/groups) + i."""
    moves_data_only = True
    traits = frozenset({KEEPS_LAYOUT})
    op: Literal["channel_shuffle"]
    groups: PositiveInt
    onnx_patterns = {"Reshape": match_channel_shuffle}
    examples = (Example({"groups": 2}, inputs=((6, 3, 4),)), Example({"groups": 3}, inputs=((6, 2, 5),)))

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        self.expect_image(shape)
        if shape[0] % self.groups:
            raise self.shape_error(f"groups={self.groups} must divide the {shape[0]} channels", field="groups")
        return shape

    def flops(self, in_shapes, out_shape):
        return 0

    def run_numpy(self, xs, params, scratch, out):
        n, h, w, c = xs[0].shape
        out.reshape(n, h, w, c // self.groups, self.groups)[...] = \
            xs[0].reshape(n, h, w, self.groups, c // self.groups).transpose(0, 1, 2, 4, 3)
        return out

    def lower(self, low):
        n, c = low.shape[:2]
        nhwc = low.channels_last[0]
        return low.simple(f"shuffle{self.groups}_{low.sample_dims()}{low.layout_suffix}", T.channel_gather,
                          n=n, c_in=c, c_out=c, spatial=math.prod(low.shape[2:]),
                          source=f"(k % {self.groups}) * {c // self.groups} + k / {self.groups}", channels_last=nhwc)

    def to_onnx(self, ex, xs, out, shape):
        c, h, w = shape
        g = self.groups
        split_to = ex.node(self.name, "Reshape", [*xs, ex.const(f"{self.name}:split_shape", [0, g, c // g, h, w], "int64")],
                           f"{self.name}:split", (g, c // g, h, w), name=f"{self.name}:split")
        swapped = ex.node(self.name, "Transpose", [split_to], f"{self.name}:transpose", (c // g, g, h, w),
                          name=f"{self.name}:transpose", perm=[0, 2, 1, 3, 4])
        ex.node(self.name, "Reshape", [swapped, ex.const(f"{self.name}:merge_shape", [0, c, h, w], "int64")], out, shape)

    def torch_reference(self, xs, weights):
        n, c, h, w = xs[0].shape
        return xs[0].reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


ONNX_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def pad(imp, node):
    """Pad of H and W (N and C unpadded), constant, reflect or edge."""
    x = imp.data(node)
    a = attributes(node)
    mode = a.get("mode", "constant")
    if mode not in ONNX_PAD_MODES:
        raise Unsupported(f'mode "{mode}" is not supported (constant, reflect and edge are)')
    if imp.opset < 11:
        pads, value = list(a.get("pads", [])), a.get("value", 0.0)
    else:
        pads = [int(v) for v in imp.numbers(node, 1, "pads").reshape(-1)]
        value = scalar(imp.value(node, 2, "constant_value", optional=True), 0.0)
        if imp.value(node, 3, "axes", optional=True) is not None:
            raise Unsupported("the axes input is not supported")
    if len(imp.shapes[x]) != 3:
        raise Unsupported(f"only padding an image (N,C,H,W) is supported, got {fmt_shape(imp.shapes[x])}")
    if len(pads) != 8:
        raise Unsupported(f"pads {pads} must have 8 values, the begins then the ends of N, C, H and W")
    n0, c0, top, left, n1, c1, bottom, right = pads
    if n0 or c0 or n1 or c1 or min(pads) < 0:
        raise Unsupported(f"pads {pads}: only non-negative padding of H and W is supported")
    layer = {"op": "pad", "padding": [left, right, top, bottom], "mode": ONNX_PAD_MODES[mode]}
    if value:
        layer["value"] = nice(value)
    imp.add_layer(node, layer, [x])


class Pad(Layer):
    """`F.pad(x, padding, mode, value)` of H and W: `padding` is one int or [left, right, top, bottom]
    (F.pad's and nn.ZeroPad2d's order). TensorFlow's asymmetric "SAME" padding is a pad before a conv."""
    moves_data_only = True
    op: Literal["pad"]
    padding: NonNegativeInt | list[NonNegativeInt] = Field(..., description="int, or [left, right, top, bottom]")
    mode: Literal["constant", "reflect", "replicate"] = "constant"
    value: Float32 = 0.0
    onnx_converters = {"Pad": pad}
    examples = (Example({"padding": [0, 1, 0, 1]}, note="TensorFlow SAME at stride 2"),
                Example({"padding": [2, 1, 1, 3], "mode": "reflect"}, inputs=((2, 5, 6),)),
                Example({"padding": 2, "mode": "replicate"}, inputs=((2, 3, 4),)),
                Example({"padding": [1, 0, 2, 1], "value": -1.5}))

    @model_validator(mode="after")
    def _check(self):
        if isinstance(self.padding, list) and len(self.padding) != 4:
            raise invalid(f"padding must be one int or [left, right, top, bottom], got {len(self.padding)} values",
                          field="padding")
        if self.value and self.mode != "constant":
            raise invalid(f'value applies to mode "constant" only, not "{self.mode}"', field="value")
        return self

    def sides(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom)."""
        return tuple(self.padding) if isinstance(self.padding, list) else (self.padding,) * 4

    def infer_shape(self, in_shapes):
        (shape,) = in_shapes
        self.expect_image(shape)
        c, h, w = shape
        left, right, top, bottom = self.sides()
        if self.mode == "reflect" and max(top, bottom) >= h or self.mode == "reflect" and max(left, right) >= w:
            raise self.shape_error(f"reflect padding must be smaller than the input {h}x{w} of {fmt_shape(shape)}",
                                   field="padding")
        return (c, h + top + bottom, w + left + right)

    def flops(self, in_shapes, out_shape):
        return 0

    def run_numpy(self, xs, params, scratch, out):
        left, right, top, bottom = self.sides()
        widths = ((0, 0), (top, bottom), (left, right), (0, 0))  # (N, H, W, C)
        if self.mode == "constant":
            out[...] = np.float32(self.value)
            out[:, top:out.shape[1] - bottom, left:out.shape[2] - right] = xs[0]
        else:
            out[...] = np.pad(xs[0], widths, mode={"reflect": "reflect", "replicate": "edge"}[self.mode])
        return out

    def lower(self, low):
        left, right, top, bottom = self.sides()
        n, c, h, w = low.in_shapes[0]
        return low.simple(f"pad_{self.mode}_{low.sample_dims()}", T.pad2d, planes=n * c, h=h, w=w, top=top,
                          left=left, p=low.shape[2], q=low.shape[3], mode=self.mode, value=self.value)

    def to_onnx(self, ex, xs, out, shape):
        left, right, top, bottom = self.sides()
        pads = ex.const(f"{self.name}:pads", [0, 0, top, left, 0, 0, bottom, right], "int64")
        mode = {"replicate": "edge"}.get(self.mode, self.mode)
        ex.node(self.name, "Pad", [*xs, pads, ex.const(f"{self.name}:value", self.value)], out, shape, mode=mode)

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        return F.pad(xs[0], self.sides(), mode=self.mode, value=self.value if self.mode == "constant" else None)
