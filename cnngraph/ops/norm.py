"""Normalisation at inference. batch_norm2d: y = (x - running_mean) / sqrt(running_var + eps) * weight
+ bias, per channel. layer_norm: each pixel's channels (a vector's features) normalised to zero mean
and unit variance, then scaled and shifted per channel."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..codegen import templates as T
from .base import ELEMENTWISE, KEEPS_LAYOUT, Example, Float32, Layer, fmt_shape
from .onnx_mapping import Unsupported, attributes, float_weight, is_close, nice, other_input, writing

KEYS = ("weight", "bias", "running_mean", "running_var")  # its weights, in PyTorch's and ONNX's order


def batch_norm_scale_shift(weights: dict[str, np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel (scale, shift) the layer reduces to, computed in float64."""
    scale = weights["weight"].astype(np.float64) / np.sqrt(weights["running_var"].astype(np.float64) + eps)
    shift = weights["bias"].astype(np.float64) - weights["running_mean"].astype(np.float64) * scale
    return scale, shift


def batch_norm(imp, node):
    a = attributes(node)
    if a.get("training_mode", 0) or not all(imp.unused(node, i) for i in range(1, len(node.output))):
        raise Unsupported("training mode (updated running statistics) is not supported; export in eval mode")
    weights = {key: float_weight(imp.value(node, i + 1, key), key).reshape(-1) for i, key in enumerate(KEYS)}
    layer = {"op": "batch_norm2d", "eps": nice(a.get("epsilon", 1e-5))}
    imp.add_layer(node, layer, [imp.data(node)], weights)


class BatchNorm2d(Layer):
    """`nn.BatchNorm2d` at inference: (x - running_mean) / sqrt(running_var + eps) * weight + bias."""
    op: Literal["batch_norm2d"]
    eps: Float32 = Field(1e-5, gt=0)
    traits = frozenset({ELEMENTWISE})
    onnx_converters = {"BatchNormalization": batch_norm}
    examples = (Example({}), Example({"eps": 0.1}, inputs=((5, 4, 3),)))

    def infer_shape(self, in_shapes):
        self.expect_image(in_shapes[0])
        return in_shapes[0]

    def weight_shapes(self, in_shapes):
        return {key: (in_shapes[0][0],) for key in KEYS}

    def init_weights(self, shapes, rng):
        c = shapes["weight"]
        return {"weight": rng.uniform(0.5, 1.5, c), "bias": rng.uniform(-0.2, 0.2, c),
                "running_mean": rng.uniform(-0.2, 0.2, c), "running_var": rng.uniform(0.5, 1.5, c)}

    def flops(self, in_shapes, out_shape):
        return 2 * int(np.prod(out_shape))

    def channel_affine(self, weights):
        return batch_norm_scale_shift(weights, self.eps)

    def prepare(self, weights, in_shapes):
        scale, shift = batch_norm_scale_shift(weights, self.eps)
        return {"scale": scale.astype(np.float32), "shift": shift.astype(np.float32)}

    def run_numpy(self, xs, params, scratch, out):
        np.multiply(xs[0], params["scale"], out=out)  # (N, H, W, C): per-channel on the last axis
        out += params["shift"]
        return out

    def lower(self, low):
        scale, shift = batch_norm_scale_shift(low.weights, self.eps)
        return low.elementwise("batchnorm", "v = LOAD(x0[idx]) * scale[k] + shift[k];",
                               consts=[low.const("scale", scale), low.const("shift", shift)])

    def to_onnx(self, ex, xs, out, shape):
        ex.node(self.name, "BatchNormalization", [*xs, *ex.weight_inputs(self, KEYS)], out, shape,
                epsilon=float(self.eps))

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        return F.batch_norm(xs[0], weights["running_mean"], weights["running_var"], weights["weight"],
                            weights["bias"], training=False, eps=self.eps)


def match_layer_norm_formula(imp, mean):
    """PyTorch's export of layer_norm before opset 17 (no LayerNormalization op): over the last axis,
    d = x - ReduceMean(x); d / Sqrt(ReduceMean(d ** 2) + eps) [* weight + bias]. Between
    Transpose(0, 2, 3, 1) and Transpose(0, 3, 1, 2) it normalises an image's channels."""
    if list(attributes(mean).get("axes", [])) != [-1]:
        return None
    x = mean.input[0]
    center = imp.only_consumer(mean.output[0], "Sub")
    if center is None or list(center.input) != [x, mean.output[0]]:
        return None
    d = center.output[0]
    readers = {n.op_type: n for n in imp.consumers.get(d, [])}
    square, divide = readers.get("Pow"), readers.get("Div")
    if len(imp.consumers.get(d, [])) != 2 or square is None or divide is None or list(divide.input)[0] != d \
            or not is_close(imp.consts.get(square.input[1]), 2.0):
        return None
    variance = imp.only_consumer(square.output[0], "ReduceMean")
    plus_eps = imp.only_consumer(variance.output[0], "Add") if variance is not None else None
    eps = imp.consts.get(other_input(plus_eps, variance.output[0]) or "") if plus_eps is not None else None
    root = imp.only_consumer(plus_eps.output[0], "Sqrt") if eps is not None and eps.size == 1 else None
    if root is None or list(divide.input) != [d, root.output[0]] or \
            list(attributes(variance).get("axes", [])) != [-1]:
        return None
    members, out, weights = [mean, center, square, variance, plus_eps, root, divide], divide.output[0], {}
    for op_type, key in (("Mul", "weight"), ("Add", "bias")):
        step = imp.only_consumer(out, op_type)
        value = imp.consts.get(other_input(step, out) or "") if step is not None else None
        if value is None:
            break
        members.append(step)
        weights[key], out = value, step.output[0]
    before, after = imp.producer.get(x), imp.only_consumer(out, "Transpose")
    image = (before is not None and before.op_type == "Transpose" and after is not None
             and list(attributes(before).get("perm", [])) == [0, 2, 3, 1]
             and list(attributes(after).get("perm", [])) == [0, 3, 1, 2]
             and {n.op_type for n in imp.consumers.get(x, [])} == {"ReduceMean", "Sub"})
    if image:
        members += [before, after]

    def convert(imp, node):
        source = imp.data(before) if image else imp.tensor(x)
        view = not image and imp.is_channels_last(source)  # after a Transpose(0, 2, 3, 1) converted alone
        shape = imp.shapes[source]
        if len(shape) != (3 if image or view else 1):
            raise Unsupported(f"layer norm over the last axis of {fmt_shape(shape)}: only over a vector's features "
                              "or, between transposes, an image's channels is supported")
        c = shape[0]
        if any(value.size not in (1, c) for value in weights.values()):
            raise Unsupported(f"its weight and bias must hold one value per channel ({c}) or a single value")
        affine = {key: float_weight(np.broadcast_to(value.reshape(-1), (c,)), key).copy()
                  for key, value in weights.items()}
        affine.setdefault("weight", np.ones(c, np.float32))
        affine.setdefault("bias", np.zeros(c, np.float32))
        imp.add_layer(node, {"op": "layer_norm", "eps": nice(float(eps.reshape(())))}, [source], affine, view)
    return members, convert


def _layer_norm_layer(imp, node, x: str, axis: int, channels_last: bool = False) -> None:
    """LayerNormalization over the last axis of a (N, F) tensor, or of the channels-last view of an
    image (`axis` is that last axis): a layer_norm layer of `x`."""
    a = attributes(node)
    if a.get("stash_type", 1) != 1 or not all(imp.unused(node, i) for i in range(1, len(node.output))):
        raise Unsupported("only float32 statistics and one output (no saved mean or inverse std) are supported")
    if a.get("axis", -1) % (axis + 1) != axis:
        raise Unsupported(f"axis {a.get('axis', -1)}: only normalising over the channels (the last axis of the "
                          "channels-last tensor) is supported")
    channels = imp.shapes[x][0]
    weights = {"weight": float_weight(imp.value(node, 1, "scale"), "scale").reshape(-1)}
    bias = imp.value(node, 2, "bias", optional=True)
    weights["bias"] = np.zeros(channels, np.float32) if bias is None else float_weight(bias, "bias").reshape(-1)
    imp.add_layer(node, {"op": "layer_norm", "eps": nice(a.get("epsilon", 1e-5))}, [x], weights, channels_last)


def layer_normalization(imp, node):
    x = imp.data(node)
    if imp.is_channels_last(x):  # behind a Transpose(0, 2, 3, 1): over the image's channels
        _layer_norm_layer(imp, node, x, 3, channels_last=True)
        return
    if len(imp.shapes[x]) != 1:
        raise Unsupported(f"LayerNormalization of {fmt_shape(imp.shapes[x])}: only over a vector's features, or "
                          "over an image's channels between Transpose(0, 2, 3, 1) and Transpose(0, 3, 1, 2), is "
                          "supported")
    _layer_norm_layer(imp, node, x, 1)


def match_channels_last_layer_norm(imp, transpose):
    """Transpose to (N, H, W, C), LayerNormalization over C, Transpose back: torchvision's LayerNorm2d
    (ConvNeXt) and any LayerNorm behind a permute."""
    if list(attributes(transpose).get("perm", [])) != [0, 2, 3, 1]:
        return None
    norm = imp.only_consumer(transpose.output[0], "LayerNormalization")
    back = imp.only_consumer(norm.output[0], "Transpose") if norm is not None else None
    if back is None or list(attributes(back).get("perm", [])) != [0, 3, 1, 2]:
        return None
    return [transpose, norm, back], lambda imp, node: _convert_channels_last(imp, transpose, norm, back)


def _convert_channels_last(imp, transpose, norm, back):
    x = imp.data(transpose)
    if len(imp.shapes[x]) != 3:
        raise Unsupported(f"Transpose(0, 2, 3, 1) of {fmt_shape(imp.shapes[x])}, not of an (N,C,H,W) image")
    _layer_norm_layer(imp, writing(norm, back.output[0]), x, 3)


class LayerNorm(Layer):
    """Layer normalisation over the channels: of each pixel of a (C, H, W) image (ConvNeXt's
    channels-first LayerNorm2d, and nn.LayerNorm(C) on the channels-last view behind a permute), or
    of a (F,) vector (nn.LayerNorm(F))."""
    op: Literal["layer_norm"]
    eps: Float32 = Field(1e-5, gt=0)
    elementwise_affine: bool = True
    traits = frozenset({KEEPS_LAYOUT})
    onnx_converters = {"LayerNormalization": layer_normalization}
    onnx_patterns = {"Transpose": match_channels_last_layer_norm, "ReduceMean": match_layer_norm_formula}
    examples = (Example({}), Example({"eps": 1e-6, "elementwise_affine": False}, inputs=((8, 3, 2),)),
                Example({}, inputs=((12,),)))

    def weight_shapes(self, in_shapes):
        c = in_shapes[0][0]
        return {"weight": (c,), "bias": (c,)} if self.elementwise_affine else {}

    def init_weights(self, shapes, rng):
        c = shapes["weight"]
        return {"weight": rng.uniform(0.5, 1.5, c), "bias": rng.uniform(-0.2, 0.2, c)}

    def flops(self, in_shapes, out_shape):
        return 8 * int(np.prod(out_shape))

    def run_numpy(self, xs, params, scratch, out):
        x = xs[0]  # (N, H, W, C) or (N, F): the channels are the last axis
        # shifted by each row's first value, so a large common offset cancels before the sums
        np.subtract(x, x[..., :1], out=out)
        out -= out.mean(axis=-1, keepdims=True)
        var = np.mean(np.square(out), axis=-1, keepdims=True)
        out *= 1 / np.sqrt(var + np.float32(self.eps))
        if self.elementwise_affine:
            out *= params["weight"]
            out += params["bias"]
        return out

    def lower(self, low):
        shape = low.shape
        inner = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        consts = [low.const("weight", low.weights["weight"]), low.const("bias", low.weights["bias"])] \
            if self.elementwise_affine else []
        if low.channels_last[0]:  # NHWC (passes/assign_layout.py): each pixel's channels are contiguous
            return low.simple(f"layernorm_{low.sample_dims()}{low.layout_suffix}", T.layer_norm_warps, consts,
                              rows=shape[0] * inner, length=shape[1], eps=self.eps, affine=self.elementwise_affine)
        return low.simple(f"layernorm_{low.sample_dims()}", T.layer_norm, consts, outer=shape[0], length=shape[1],
                          inner=inner, eps=self.eps, affine=self.elementwise_affine)

    def to_onnx(self, ex, xs, out, shape):
        c = shape[0]
        weights = ex.weight_inputs(self, ("weight", "bias")) or [ex.const(f"{self.name}:scale", np.ones(c)),
                                                                  ex.const(f"{self.name}:bias", np.zeros(c))]
        if len(shape) == 1:
            ex.node(self.name, "LayerNormalization", [*xs, *weights], out, shape, axis=-1, epsilon=float(self.eps))
            return
        channels_last = (*shape[1:], c)
        last = ex.node(self.name, "Transpose", xs, f"{self.name}:nhwc", channels_last, name=f"{self.name}:nhwc",
                       perm=[0, 2, 3, 1])
        normed = ex.node(self.name, "LayerNormalization", [last, *weights], f"{self.name}:norm", channels_last,
                         name=f"{self.name}:norm", axis=-1, epsilon=float(self.eps))
        ex.node(self.name, "Transpose", [normed], out, shape, perm=[0, 3, 1, 2])

    def torch_reference(self, xs, weights):
        import torch.nn.functional as F
        image = xs[0].dim() == 4
        x = xs[0].permute(0, 2, 3, 1) if image else xs[0]  # channels last: F.layer_norm normalises the last axis
        y = F.layer_norm(x, x.shape[-1:], weights.get("weight"), weights.get("bias"), self.eps)
        return y.permute(0, 3, 1, 2) if image else y
