"""ONNX interop (cnngraph.from_onnx, export_onnx, weights_from_torch and their commands).

- Models built in PyTorch, exported with `torch.onnx.export`, imported by cnngraph, compiled and run:
  every example network (through the oracle's TorchNet) and one small model per supported ONNX op
  or pattern; the outputs agree with ONNX Runtime and with PyTorch (relative error < 1e-4).
- Hand-written ONNX models for what PyTorch does not emit (Dropout, Identity, Sum, auto_pad,
  older opsets, Resize modes, Gemm's alpha/beta), against ONNX Runtime.
- Round trip: spec -> export_onnx -> onnx.checker (full) and ONNX Runtime -> from_onnx -> the same
  spec and the same outputs; fused groups annotated in node metadata.
- Errors: unsupported ops (every one listed), unsupported attributes, shapes that disagree with the
  declared ones, malformed, truncated and missing files, onnx not installed; all one line.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

import cnngraph  # noqa: E402
from test_cli import run_main  # noqa: E402
from cnngraph.interop import SUPPORTED_OPS  # noqa: E402
from torch_oracle import TorchNet, random_weights, run_spec  # noqa: E402
from zoo_torch import Fn, torch_export  # noqa: E402

TOL = 1e-4
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["lenet5", "cifar_vgg", "resnet18", "mobilenet_v2", "squeezenet1_1", "unet_small"]


def rel_err(out, ref) -> float:
    ref = np.asarray(ref, np.float64)
    assert np.linalg.norm(ref) > 0
    return float(np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref))


def randn(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def example(name: str) -> dict:
    return json.loads((ROOT / "examples" / f"{name}.json").read_text())


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def run_imported(path: Path, x: np.ndarray):
    """(spec, weights, output) of the ONNX model at `path` imported and run by cnngraph's NumPy backend."""
    spec, weights = cnngraph.from_onnx(path)
    y = cnngraph.compile(spec, batch_size=x.shape[0], device="cpu", weights=weights)(x)
    return spec, weights, y


# --- the example networks, from PyTorch -------------------------------------------------------------

@pytest.mark.parametrize("name", EXAMPLES)
def test_example_from_torch(name, tmp_path):
    spec = example(name)
    weights = random_weights(spec, seed=3)
    x = randn(1, *spec["inputs"][0]["shape"], seed=4)
    path = torch_export(TorchNet(spec, weights), x, tmp_path / f"{name}.onnx")
    _, _, y = run_imported(path, x)
    (oracle,) = run_spec(spec, weights, x).values()  # float64
    assert y.shape == oracle.shape
    assert rel_err(y, run_ort(path, x)) < TOL
    assert rel_err(y, oracle) < TOL


# --- one model per op or pattern, from PyTorch -----------------------------------------------------------

def batch_norm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():  # statistics other than the defaults (0 and 1), so they matter
        for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            tensor.copy_(torch.rand(channels) + 0.5)
    return bn


class MatMul(nn.Module):
    """x.flatten(1) @ W (+ b): PyTorch exports it as MatMul (and Add), where nn.Linear gives Gemm."""

    def __init__(self, bias: bool):
        super().__init__()
        self.w = nn.Parameter(torch.randn(243, 10) * 0.1)
        self.b = nn.Parameter(torch.randn(10)) if bias else None

    def forward(self, x):
        y = x.flatten(1) @ self.w
        return y if self.b is None else y + self.b


IMAGE = (2, 3, 9, 9)
# (id, module, input shape, opset, the layer ops the import must produce)
TORCH_CASES = [
    ("conv", lambda: nn.Conv2d(3, 8, 3, padding=1), IMAGE, 17, ["conv2d"]),
    ("conv_stride_dilation_groups", lambda: nn.Conv2d(4, 8, (3, 5), stride=(2, 1), padding=(2, 1), dilation=(2, 1),
                                                      groups=2), (2, 4, 11, 9), 17, ["conv2d"]),
    ("conv_same_even_kernel", lambda: nn.Conv2d(3, 4, 4, padding="same", bias=False), IMAGE, 17, ["conv2d"]),
    ("conv_depthwise", lambda: nn.Conv2d(3, 3, 3, stride=2, padding=1, groups=3), IMAGE, 17, ["conv2d"]),
    ("gemm", lambda: nn.Sequential(nn.Flatten(), nn.Linear(243, 10)), IMAGE, 17, ["flatten", "linear"]),
    ("matmul_add", lambda: MatMul(bias=True), IMAGE, 17, ["flatten", "linear"]),
    ("matmul", lambda: MatMul(bias=False), IMAGE, 17, ["flatten", "linear"]),
    ("batch_norm", lambda: batch_norm(3), IMAGE, 17, ["batch_norm2d"]),
    ("relu", nn.ReLU, IMAGE, 17, ["relu"]),
    ("relu6", nn.ReLU6, IMAGE, 17, ["relu6"]),
    ("clamp_min0", lambda: Fn(lambda m, x: torch.clamp(x, min=0)), IMAGE, 17, ["relu"]),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), IMAGE, 17, ["leaky_relu"]),
    ("sigmoid", nn.Sigmoid, IMAGE, 17, ["sigmoid"]),
    ("tanh", nn.Tanh, IMAGE, 17, ["tanh"]),
    ("hardswish", nn.Hardswish, IMAGE, 17, ["hardswish"]),
    ("silu", nn.SiLU, IMAGE, 17, ["silu"]),
    ("gelu_erf_pattern", nn.GELU, IMAGE, 17, ["gelu"]),
    ("gelu_op", nn.GELU, IMAGE, 20, ["gelu"]),
    ("gelu_tanh_op", lambda: nn.GELU(approximate="tanh"), IMAGE, 20, ["gelu"]),
    ("conv_relu_fused", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1)), IMAGE, 17,
     ["conv2d", "conv2d"]),
    ("max_pool", lambda: nn.MaxPool2d(3, 2, 1), IMAGE, 17, ["max_pool2d"]),
    ("max_pool_ceil", lambda: nn.MaxPool2d(3, 2, ceil_mode=True), (2, 3, 10, 10), 17, ["max_pool2d"]),
    ("avg_pool", lambda: nn.AvgPool2d(3, 2, 1), IMAGE, 17, ["avg_pool2d"]),
    ("avg_pool_exclude_pad_ceil", lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), IMAGE,
     17, ["avg_pool2d"]),
    ("global_avg_pool", lambda: nn.AdaptiveAvgPool2d(1), IMAGE, 17, ["global_avg_pool2d"]),
    ("flatten", nn.Flatten, IMAGE, 17, ["flatten"]),
    ("view_batch_minus1", lambda: Fn(lambda m, x: x.view(x.size(0), -1)), IMAGE, 17, ["flatten"]),
    ("reshape_minus1_f", lambda: Fn(lambda m, x: x.reshape(-1, 243)), IMAGE, 17, ["flatten"]),
    ("add_residual", lambda: Fn(lambda m, x: m.conv(x) + x, conv=nn.Conv2d(3, 3, 3, padding=1)), IMAGE, 17,
     ["conv2d", "add"]),
    ("concat", lambda: Fn(lambda m, x: torch.cat([x, m.conv(x)], 1), conv=nn.Conv2d(3, 2, 1)), IMAGE, 17,
     ["conv2d", "concat"]),
    ("softmax_channels", lambda: nn.Softmax(1), IMAGE, 17, ["softmax"]),
    ("softmax_features", lambda: nn.Sequential(nn.Flatten(), nn.Softmax(1)), IMAGE, 17, ["flatten", "softmax"]),
    ("upsample_nearest", lambda: nn.Upsample(scale_factor=2), IMAGE, 17, ["upsample2d"]),
    ("upsample_nearest_2x3", lambda: nn.Upsample(scale_factor=(2, 3)), IMAGE, 17, ["upsample2d"]),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_op_from_torch(case, tmp_path):
    name, factory, shape, opset, ops = case
    torch.manual_seed(1)
    module = factory().eval()
    x = randn(*shape, seed=2)
    path = torch_export(module, x, tmp_path / f"{name}.onnx", opset=opset)
    spec, _, y = run_imported(path, x)
    assert [layer.op for layer in spec.layers] == ops
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert y.shape == expected.shape
    assert rel_err(y, run_ort(path, x)) < TOL
    assert rel_err(y, expected) < TOL


def test_view_with_static_batch(tmp_path):
    """Without a dynamic batch axis PyTorch folds x.size(0) into a constant: still a flatten."""
    module = Fn(lambda m, x: m.fc(x.view(x.size(0), -1)), fc=nn.Linear(243, 4))
    x = randn(*IMAGE)
    path = torch_export(module, x, tmp_path / "static.onnx", dynamic=False)
    spec, _, y = run_imported(path, x)
    assert [layer.op for layer in spec.layers] == ["flatten", "linear"]
    assert rel_err(y, run_ort(path, x)) < TOL


def test_torch_module_names_become_layer_names(tmp_path):
    """Module paths name the layers, so the imported weights have the state_dict's keys, and
    weights_from_torch(state_dict) runs the imported spec as it is."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), batch_norm(8)))
    model.add_module("head", nn.Sequential(nn.Flatten(), nn.Linear(8 * 3 * 3, 5)))
    x = randn(2, 3, 8, 8)
    path = torch_export(model, x, tmp_path / "named.onnx")
    spec, weights, _ = run_imported(path, x)
    state = cnngraph.weights_from_torch(model.state_dict())
    assert set(weights) == set(state)  # num_batches_tracked dropped
    assert "features.0" in [layer.name for layer in spec.layers]
    y = cnngraph.compile(spec, 2, device="cpu", weights=state)(x)
    with torch.no_grad():
        assert rel_err(y, model(torch.from_numpy(x)).numpy()) < TOL


def test_names_are_cleaned_and_unique(tmp_path):
    model = onnx_model([helper.make_node("Relu", ["in put"], ["a"], name="same"),
                        helper.make_node("Sigmoid", ["a"], ["b"], name="same"),
                        helper.make_node("Tanh", ["b"], ["c"], name="line\nbreak\u2028\x1b[0m"),
                        helper.make_node("Relu", ["c"], ["y"])], [("in put", ["N", 3, 9, 9])], [("y", ["N", 3, 9, 9])])
    spec, _ = cnngraph.from_onnx(save(model, tmp_path / "names.onnx"))
    assert spec.inputs[0].name == "in_put"
    assert [layer.name for layer in spec.layers] == ["same", "same_1", "line_break__[0m", "y"]


# --- hand-written ONNX models: what PyTorch does not emit ----------------------------------------------

def onnx_model(nodes, inputs, outputs, initializers=(), opset=17, value_info=()):
    def info(name, dims):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    graph = helper.make_graph(nodes, "hand", [info(n, d) for n, d in inputs], [info(n, d) for n, d in outputs],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in initializers],
                              value_info=[info(n, d) for n, d in value_info])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def save(model, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


W3 = randn(4, 3, 3, 3, seed=5) * 0.3
X = [("x", ["N", 3, 9, 9])]


def reshape_transpose_reshape(split: list[int], merge: list[int], out_shape: list, perm=(0, 2, 1, 3, 4)):
    """x -> Reshape(split) -> Transpose(perm; none: ONNX's reversal) -> Reshape(merge): the form of
    torchvision's channel_shuffle, or something that only looks like it."""
    swap = {"perm": list(perm)} if perm is not None else {}
    return onnx_model([helper.make_node("Reshape", ["x", "split"], ["r"], name="cs/split"),
                       helper.make_node("Transpose", ["r"], ["t"], name="cs/swap", **swap),
                       helper.make_node("Reshape", ["t", "merge"], ["y"], name="cs/merge")], X, [("y", out_shape)],
                      [("split", np.array(split, np.int64)), ("merge", np.array(merge, np.int64))])


HAND_CASES = {
    "dropout_identity_sum": (onnx_model(
        [helper.make_node("Dropout", ["x", "ratio"], ["d"], name="drop"),
         helper.make_node("Identity", ["d"], ["i"], name="same"),
         helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Sum", ["i", "r", "x"], ["y"], name="sum")],
        X, [("y", ["N", 3, 9, 9])], [("ratio", np.float32(0.25))]), ["dropout", "relu", "add"]),
    "conv_auto_pad_same_lower": (onnx_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", auto_pad="SAME_LOWER")],
        X, [("y", ["N", 4, 9, 9])], [("w", W3)]), ["conv2d"]),
    "conv_auto_pad_same_upper_stride2": (onnx_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", auto_pad="SAME_UPPER", strides=[2, 2])],
        X, [("y", ["N", 4, 5, 5])], [("w", W3)]), ["conv2d"]),
    "conv_auto_pad_valid": (onnx_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", auto_pad="VALID")],
        X, [("y", ["N", 4, 7, 7])], [("w", W3), ("b", randn(4))]), ["conv2d"]),
    "conv_unread_end_padding": (onnx_model(  # the extra bottom/right row is never reached at stride 2
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 2, 2], strides=[2, 2])],
        X, [("y", ["N", 4, 5, 5])], [("w", W3)]), ["conv2d"]),
    "gemm_alpha_beta_no_transpose": (onnx_model(
        [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "B", "C"], ["y"], name="fc", alpha=0.5, beta=2.0)],
        X, [("y", ["N", 6])], [("B", randn(243, 6, seed=6)), ("C", randn(1, 6, seed=7))]), ["flatten", "linear"]),
    "leaky_relu_default_alpha": (onnx_model(
        [helper.make_node("LeakyRelu", ["x"], ["y"], name="leaky")], X, [("y", ["N", 3, 9, 9])]), ["leaky_relu"]),
    "clip_attributes_opset10": (onnx_model(
        [helper.make_node("Clip", ["x"], ["y"], name="clip", min=0.0, max=6.0)], X, [("y", ["N", 3, 9, 9])],
        opset=10), ["relu6"]),
    "softmax_opset11_2d": (onnx_model(
        [helper.make_node("Flatten", ["x"], ["f"], name="flat"), helper.make_node("Softmax", ["f"], ["y"], name="sm")],
        X, [("y", ["N", 243])], opset=11), ["flatten", "softmax"]),
    "resize_half_pixel_default": (onnx_model(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="nearest")],
        X, [("y", ["N", 3, 18, 27])], [("scales", np.array([1, 1, 2, 3], np.float32))]), ["upsample2d"]),
    "resize_sizes": (onnx_model(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="up", mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
        X, [("y", [2, 3, 27, 18])], [("sizes", np.array([2, 3, 27, 18], np.int64))]), ["upsample2d"]),
    "upsample_opset9": (onnx_model(
        [helper.make_node("Upsample", ["x", "scales"], ["y"], name="up")],
        X, [("y", ["N", 3, 18, 18])], [("scales", np.array([1, 1, 2, 2], np.float32))], opset=9), ["upsample2d"]),
    "silu_any_order_and_unnamed": (onnx_model(
        [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])],
        X, [("y", ["N", 3, 9, 9])]), ["silu"]),
    "gelu_half_first": (onnx_model(  # (0.5 * x) * (1 + erf(x * (1 / sqrt 2)))
        [helper.make_node("Mul", ["x", "half"], ["hx"], name="g/half"),
         helper.make_node("Mul", ["x", "rsqrt2"], ["s"], name="g/scale"),
         helper.make_node("Erf", ["s"], ["e"], name="g/erf"),
         helper.make_node("Add", ["one", "e"], ["p"], name="g/plus"),
         helper.make_node("Mul", ["hx", "p"], ["y"], name="g")],
        X, [("y", ["N", 3, 9, 9])],
        [("half", np.float32(0.5)), ("rsqrt2", np.float32(2 ** -0.5)), ("one", np.float32(1))]), ["gelu"]),
    # a parameter times a tensor (`self.gamma * x`): the constant comes first
    "mul_constant_first": (onnx_model([helper.make_node("Mul", ["g", "x"], ["y"], name="gamma")], X,
                                      [("y", ["N", 3, 9, 9])], [("g", randn(3, 1, 1, seed=9))]), ["scale"]),
    "slice_negative_axis": (onnx_model([helper.make_node("Slice", ["x", "s", "e", "a"], ["y"], name="sl")], X,
                                       [("y", ["N", 2, 9, 9])], [("s", np.array([1], np.int64)),
                                                                 ("e", np.array([3], np.int64)),
                                                                 ("a", np.array([-3], np.int64))]), ["slice"]),
    # from opset 13 a Softmax without an axis is over the last axis (W here), before it over all but N
    "softmax_opset13_default_axis": (onnx_model([helper.make_node("Softmax", ["x"], ["y"], name="sm")], X,
                                                [("y", ["N", 3, 9, 9])], opset=13), ["softmax"]),
    # torchvision's channel_shuffle with the group size left to Reshape (-1)
    "channel_shuffle_inferred_group_size": (reshape_transpose_reshape([0, 3, -1, 9, 9], [0, -1, 9, 9], ["N", 3, 9, 9]),
        ["channel_shuffle"]),
    # PyTorch's Hardswish before opset 14: x * HardSigmoid(x) with alpha 1/6
    "hardswish_opset13": (onnx_model([helper.make_node("HardSigmoid", ["x"], ["hs"], name="hs", alpha=1 / 6),
                                      helper.make_node("Mul", ["x", "hs"], ["y"], name="hsw")], X,
                                     [("y", ["N", 3, 9, 9])], opset=13), ["hardswish"]),
    # before opset 10 Slice's starts, ends and axes are attributes
    "slice_opset9": (onnx_model([helper.make_node("Slice", ["x"], ["y"], name="sl", starts=[1], ends=[3], axes=[1])],
                                X, [("y", ["N", 2, 9, 9])], opset=9), ["slice"]),
    # before opset 11 Clip's bounds are attributes; one of them alone is a clamp on that side
    "clip_opset10_max_only": (onnx_model([helper.make_node("Clip", ["x"], ["y"], name="clip", max=0.5)], X,
                                         [("y", ["N", 3, 9, 9])], opset=10), ["clamp"]),
    # Resize from opset 11 without coordinate_transformation_mode: half_pixel (before it: asymmetric)
    "resize_opset11_default_coordinates": (onnx_model(
        [helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="up", mode="linear")], X,
        [("y", ["N", 3, 18, 18])], [("roi", np.zeros(0, np.float32)), ("scales", np.array([1, 1, 2, 2], np.float32))],
        opset=11), ["upsample2d"]),
    # LayerNormalization without an axis: the last one (here the features of a vector)
    "layer_norm_default_axis": (onnx_model([helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                                            helper.make_node("LayerNormalization", ["f", "g", "b"], ["y"], name="ln")],
                                           X, [("y", ["N", 243])], [("g", randn(243, seed=11)), ("b", randn(243, seed=12))]),
                                ["flatten", "layer_norm"]),
    # shape arithmetic: Unsqueeze then Squeeze of a constant, evaluated at import, is Reshape's target
    "constant_unsqueeze_squeeze_chain": (onnx_model(
        [helper.make_node("Unsqueeze", ["target", "axis0"], ["u"], name="u"),
         helper.make_node("Squeeze", ["u", "axis0"], ["t"], name="s"),
         helper.make_node("Reshape", ["x", "t"], ["y"], name="rs")], X, [("y", ["N", 243])],
        [("target", np.array([0, -1], np.int64)), ("axis0", np.array([0], np.int64))]), ["flatten"]),
    # LayerNormalization behind a channels-last Transpose, its axis written as 3 rather than -1
    "channels_last_layer_norm_axis3": (onnx_model(
        [helper.make_node("Transpose", ["x"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
         helper.make_node("LayerNormalization", ["t", "g", "b"], ["n"], name="ln", axis=3),
         helper.make_node("Transpose", ["n"], ["y"], name="to_nchw", perm=[0, 3, 1, 2])], X, [("y", ["N", 3, 9, 9])],
        [("g", randn(3, seed=13)), ("b", randn(3, seed=14))]), ["layer_norm"]),
    # the same LayerNormalization followed by a Linear on the channels-last view (ConvNeXt's block)
    "channels_last_layer_norm_axis3_then_linear": (onnx_model(
        [helper.make_node("Transpose", ["x"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
         helper.make_node("LayerNormalization", ["t", "g", "b"], ["n"], name="ln", axis=3),
         helper.make_node("MatMul", ["n", "w"], ["m"], name="fc"),
         helper.make_node("Transpose", ["m"], ["y"], name="to_nchw", perm=[0, 3, 1, 2])], X, [("y", ["N", 5, 9, 9])],
        [("g", randn(3, seed=19)), ("b", randn(3, seed=20)), ("w", randn(3, 5, seed=21))]), ["layer_norm", "conv2d"]),
    # before opset 11 the pads and the value are attributes
    "pad_opset10": (onnx_model([helper.make_node("Pad", ["x"], ["y"], name="pad", pads=[0, 0, 1, 2, 0, 0, 2, 1],
                                                 value=0.5)], X, [("y", ["N", 3, 12, 12])], opset=10), ["pad"]),
}


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_written_model(name, tmp_path):
    model, ops = HAND_CASES[name]
    path = save(model, tmp_path / f"{name}.onnx")
    x = randn(2, 3, 9, 9, seed=8)
    spec, _, y = run_imported(path, x)
    assert [layer.op for layer in spec.layers] == ops
    assert rel_err(y, run_ort(path, x)) < TOL


def test_dropout_ratio_before_opset_12_is_an_attribute(tmp_path):
    model = onnx_model([helper.make_node("Dropout", ["x"], ["y"], name="drop", ratio=0.3)], X,
                       [("y", ["N", 3, 9, 9])], opset=10)
    spec, _ = cnngraph.from_onnx(save(model, tmp_path / "drop.onnx"))
    assert [(layer.op, layer.p) for layer in spec.layers] == [("dropout", pytest.approx(0.3))]


def test_an_add_of_two_exports_as_add_and_of_more_as_sum(tmp_path):
    """Add, not a two-input Sum: what other tools' fusions (a conv's residual epilogue) look for."""
    import onnx

    spec = _image_net([{"op": "conv2d", "name": "c", "out_channels": 3, "kernel_size": 1},
                       {"op": "add", "name": "two", "inputs": ["c", "x"]},
                       {"op": "add", "name": "three", "inputs": ["two", "c", "x"]}])
    cnngraph.export_onnx(spec, tmp_path / "adds.onnx")
    kinds = {node.name: node.op_type for node in onnx.load(str(tmp_path / "adds.onnx")).graph.node}
    assert kinds["two"] == "Add" and kinds["three"] == "Sum"


def test_reshape_to_the_batch_size_fixed_at_export(tmp_path):
    """`x.view(1, -1)` traced at batch 1 writes the batch as the number 1: taken to be the batch."""
    model = onnx_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")], X, [("y", [1, 243])],
                       [("s", np.array([1, 243], np.int64))])
    path = save(model, tmp_path / "view1.onnx")
    x = randn(1, 3, 9, 9, seed=10)
    spec, _, y = run_imported(path, x)
    assert [layer.op for layer in spec.layers] == ["flatten"]
    assert rel_err(y, run_ort(path, x)) < TOL


# --- round trip: spec -> ONNX -> spec ---------------------------------------------------------------------

EVERY_OP = {
    "format_version": 1, "name": "every_op",
    "inputs": [{"name": "x", "shape": [3, 12, 12]}],
    "layers": [
        {"op": "conv2d", "name": "c1", "out_channels": 8, "kernel_size": 3, "padding": "same",
         "activation": {"op": "leaky_relu", "negative_slope": 0.2}},
        {"op": "batch_norm2d", "name": "bn1", "eps": 1e-3},
        {"op": "relu6", "name": "r6"},
        {"op": "conv2d", "name": "c2", "out_channels": 8, "kernel_size": 4, "padding": "same", "bias": False,
         "activation": "silu"},
        {"op": "avg_pool2d", "name": "ap", "kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": False},
        {"op": "sigmoid", "name": "sg"}, {"op": "tanh", "name": "th"}, {"op": "gelu", "name": "ge"},
        {"op": "gelu", "name": "gt", "approximate": "tanh"}, {"op": "hardswish", "name": "hs"},
        {"op": "silu", "name": "si"}, {"op": "leaky_relu", "name": "lr"}, {"op": "relu", "name": "re"},
        {"op": "dropout", "name": "dr", "p": 0.1},
        {"op": "max_pool2d", "name": "mp", "kernel_size": 3, "stride": 2, "padding": 1},
        {"op": "upsample2d", "name": "up", "scale_factor": 2},
        {"op": "conv2d", "name": "c3", "out_channels": 8, "kernel_size": [3, 1], "padding": [2, 0], "dilation": [2, 1],
         "groups": 8, "inputs": ["re"]},
        {"op": "concat", "name": "cat", "inputs": ["up", "c3"]},
        {"op": "conv2d", "name": "c4", "out_channels": 16, "kernel_size": 1, "inputs": ["x"]},
        {"op": "add", "name": "sum", "inputs": ["cat", "c4", "cat"]},
        {"op": "max_pool2d", "name": "mp2", "kernel_size": 3, "stride": 2, "ceil_mode": True},
        {"op": "softmax", "name": "sm_c", "axis": 1},
        {"op": "global_avg_pool2d", "name": "gap"}, {"op": "flatten", "name": "flat"},
        {"op": "linear", "name": "fc1", "out_features": 12, "activation": {"op": "gelu", "approximate": "tanh"}},
        {"op": "linear", "name": "fc2", "out_features": 5, "bias": False},
        {"op": "softmax", "name": "prob"},
    ],
    "outputs": ["prob", "sm_c"],
}


def assert_same_outputs(a, b, tol=TOL):
    a = a if isinstance(a, dict) else {"": a}
    b = b if isinstance(b, dict) else {"": b}
    assert list(a) == list(b)
    for key in a:
        assert rel_err(a[key], b[key]) < tol, key


@pytest.mark.parametrize("name", [*EXAMPLES, "every_op"])
def test_round_trip(name, tmp_path):
    spec = cnngraph.parse_spec(EVERY_OP if name == "every_op" else example(name))
    weights = random_weights(EVERY_OP if name == "every_op" else example(name), seed=9)
    path = tmp_path / f"{name}.onnx"
    cnngraph.export_onnx(spec, path, weights=weights)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [n.name for n in model.graph.node if ":" not in n.name] == [layer.name for layer in spec.layers]

    x = randn(1, *spec.inputs[0].shape, seed=10)
    ours = cnngraph.compile(spec, 1, device="cpu", weights=weights)(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = dict(zip(spec.output_names, session.run(spec.output_names, {spec.inputs[0].name: x})))
    assert_same_outputs(ours if isinstance(ours, dict) else {spec.output_names[0]: ours}, theirs)

    back, back_weights = cnngraph.from_onnx(path)
    assert (back.inputs, back.layers, back.output_names) == (spec.inputs, spec.layers, spec.output_names)
    assert set(back_weights) == set(weights)
    assert_same_outputs(cnngraph.compile(back, 1, device="cpu", weights=back_weights)(x), ours, tol=1e-6)


def test_export_annotates_fused_groups(tmp_path):
    path = tmp_path / "lenet5.onnx"
    cnngraph.export_onnx(ROOT / "examples" / "lenet5.json", path)
    meta = {n.name: {p.key: p.value for p in n.metadata_props} for n in onnx.load(str(path)).graph.node}
    assert meta["c1"] == {"cnngraph.fused_op": "conv2d+relu+max_pool2d", "cnngraph.fused_layers": '["c1", "s2"]'}
    assert meta["s2"]["cnngraph.fused_op"] == "conv2d+relu+max_pool2d"
    assert meta["f5"]["cnngraph.fused_op"] == "linear+relu"
    assert meta["prob"] == {}  # not fused
    cnngraph.export_onnx(ROOT / "examples" / "lenet5.json", path, annotate=False)
    assert not any(n.metadata_props for n in onnx.load(str(path)).graph.node)


def test_export_seeded_weights_match_compile(tmp_path):
    """Without weights, the initializers are the seeded ones `compile` uses, so ORT agrees with it."""
    path = tmp_path / "squeezenet.onnx"
    cnngraph.export_onnx(ROOT / "examples" / "squeezenet1_1.json", path, annotate=False)
    x = randn(1, 3, 224, 224, seed=11)
    model = cnngraph.compile(ROOT / "examples" / "squeezenet1_1.json", 1, device="cpu")
    assert rel_err(model(x), run_ort(path, x)) < TOL


# --- weights_from_torch ----------------------------------------------------------------------------------

def test_weights_from_torch_converts_and_drops_bookkeeping():
    state = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()
    state["2.weight"] = torch.ones(2, dtype=torch.bfloat16)
    state["3.weight"] = np.ones(2, np.float64)
    weights = cnngraph.weights_from_torch(state)
    assert "1.num_batches_tracked" not in weights and "1.running_var" in weights
    assert all(isinstance(v, np.ndarray) for v in weights.values())
    assert weights["2.weight"].dtype == np.float32 and weights["3.weight"].dtype == np.float64  # compile converts
    assert np.array_equal(weights["0.weight"], state["0.weight"].numpy())
    assert np.array_equal(weights["2.weight"], [1, 1])


def test_weights_from_torch_are_checked_by_compile():
    spec = {"format_version": 1, "inputs": [{"name": "x", "shape": [4]}],
            "layers": [{"op": "linear", "name": "fc", "out_features": 2}]}
    state = nn.Linear(4, 2).state_dict()
    with pytest.raises(cnngraph.WeightsError, match='"fc.weight" has dtype int64'):
        cnngraph.compile(spec, device="cpu", weights=cnngraph.weights_from_torch(
            {"fc.weight": torch.ones(2, 4, dtype=torch.int64), "fc.bias": state["bias"]}))
    huge = {"fc.weight": state["weight"].double() * 1e39, "fc.bias": state["bias"]}
    with pytest.raises(cnngraph.WeightsError, match="beyond float32's range"):
        cnngraph.compile(spec, device="cpu", weights=cnngraph.weights_from_torch(huge))


def test_weights_from_torch_errors():
    with pytest.raises(cnngraph.WeightsError, match="mapping"):
        cnngraph.weights_from_torch([1, 2])


# --- errors -----------------------------------------------------------------------------------------------

def one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and isinstance(excinfo.value, cnngraph.CnnGraphError)
    return text


def test_unsupported_ops_are_all_listed(tmp_path):
    module = Fn(lambda m, x: torch.sin(m.conv(x)).pow(3) + torch.cos(x).sum(1, keepdim=True) * x,
                conv=nn.Conv2d(3, 3, 1))
    path = torch_export(module, randn(*IMAGE), tmp_path / "trig.onnx")
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(path)
    text = one_line_error(excinfo)
    assert str(path) in text
    for node in ('"/Sin" (Sin)', '"/Pow" (Pow)', '"/Cos" (Cos)', '"/ReduceSum" (ReduceSum)'):
        assert node in text
    assert '"/Mul"' not in text  # it reads a node already reported: listed once, at the cause
    assert "4 ONNX node(s) cannot be expressed" in text and "Conv, " in text  # the supported ops are listed


def test_a_long_list_of_unsupported_nodes_is_cut(tmp_path):
    nodes = [helper.make_node("Sin", ["x"], [f"s{i}"], name=f"sin{i}") for i in range(30)]
    nodes.append(helper.make_node("Sum", [f"s{i}" for i in range(30)], ["y"], name="sum"))
    path = save(onnx_model(nodes, X, [("y", ["N", 3, 9, 9])]), tmp_path / "sines.onnx")
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(path)
    text = one_line_error(excinfo)
    assert "30 ONNX node(s)" in text and '"sin19"' in text and '"sin20"' not in text and "and 10 more" in text


def _conv_model(**attrs):
    return onnx_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)], X,
                      [("y", ["N", 4, None, None])], [("w", W3)])


def _corrupt_tensor() -> TensorProto:
    """3 floats whose data holds 5 bytes."""
    return TensorProto(data_type=TensorProto.FLOAT, dims=[3], raw_data=bytes(5))


BAD_NODES = {
    "conv_weight_computed": (onnx_model([helper.make_node("Conv", ["x", "x"], ["y"], name="conv")], X,
                                        [("y", ["N", 3, 1, 1])]), ['"conv" (Conv)', "must be a constant"]),
    "resize_linear_asymmetric": (onnx_model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="linear",
                                                               coordinate_transformation_mode="asymmetric")], X,
                                            [("y", ["N", 3, 18, 18])], [("s", np.array([1, 1, 2, 2], np.float32))]),
                                 ['"up" (Resize)', "'asymmetric' is not supported"]),
    "resize_fractional": (onnx_model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="nearest")],
                                     X, [("y", ["N", 3, 13, 13])], [("s", np.array([1, 1, 1.5, 1.5], np.float32))]),
                          ["only resizing H and W to whole sizes"]),
    "concat_axis2": (onnx_model([helper.make_node("Concat", ["x", "x"], ["y"], name="cat", axis=2)], X,
                                [("y", ["N", 3, 18, 9])]), ['"cat" (Concat)', "axis 2"]),
    "clip_computed_bounds": (onnx_model([helper.make_node("Clip", ["x", "x"], ["y"], name="clip")], X,
                                        [("y", ["N", 3, 9, 9])]), ['"clip" (Clip)', "its min must be a constant"]),
    "pool_padding_too_large": (onnx_model([helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                                                            pads=[2, 2, 2, 2])], X, [("y", ["N", 3, 6, 6])]),
                               ['"pool" (MaxPool)', "at most half the kernel size"]),
    "reshape_rank3": (onnx_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")], X,
                                 [("y", ["N", 27, 9])], [("s", np.array([0, 27, 9], np.int64))]),
                      ["only a reshape that keeps the batch, to (N, F) or (N, C, H, W)", "[0, 27, 9]"]),
    "resize_batch_scale": (onnx_model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="nearest")],
                                      X, [("y", ["N", 3, 18, 18])], [("s", np.array([2, 1, 2, 2], np.float32))]),
                           ["to whole sizes", "1 in N"]),
    "slice_two_axes": (onnx_model([helper.make_node("Slice", ["x", "s", "e", "a"], ["y"], name="sl")], X,
                                  [("y", ["N", 2, 2, 9])], [("s", np.array([1, 1], np.int64)),
                                                            ("e", np.array([3, 3], np.int64)),
                                                            ("a", np.array([1, 2], np.int64))]),
                       ['"sl" (Slice)', "only a slice along channels", "axes [1, 2]"]),
    "slice_step2": (onnx_model([helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"], name="sl")], X,
                               [("y", ["N", 1, 9, 9])], [("s", np.array([0], np.int64)), ("e", np.array([3], np.int64)),
                                                         ("a", np.array([1], np.int64)),
                                                         ("t", np.array([2], np.int64))]),
                    ['"sl" (Slice)', "steps [2]"]),
    # allowzero=1: a 0 is a zero-sized dimension, not "the input's", so this asks for an empty batch
    "reshape_allowzero": (onnx_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs", allowzero=1)], X,
                                     [("y", [0, 27, 3, 3])], [("s", np.array([0, 27, 3, 3], np.int64))]),
                          ['"rs" (Reshape)', "only a reshape that keeps the batch", "[0, 27, 3, 3]"]),
    # GELU's formula cut short (no multiplication by x / 2): not a GELU, and Erf alone has no layer
    "erf_without_gelu": (onnx_model([helper.make_node("Mul", ["x", "rsqrt2"], ["s"], name="g/scale"),
                                     helper.make_node("Erf", ["s"], ["e"], name="g/erf"),
                                     helper.make_node("Add", ["one", "e"], ["y"], name="g/plus")], X,
                                    [("y", ["N", 3, 9, 9])], [("rsqrt2", np.float32(2 ** -0.5)),
                                                              ("one", np.float32(1))]),
                         ['"g/erf" (Erf)', "Erf is supported only in the formula of GELU"]),
    # the first reshape and the transpose of a shuffle, but the second reshape does not merge the channels back
    "reshape_transpose_not_a_shuffle": (reshape_transpose_reshape([0, 3, 1, 9, 9], [0, 3, 81, 1], ["N", 3, 81, 1]),
        ["not a channel shuffle of (N,3,9,9)"]),
    "split_default_axis": (onnx_model([helper.make_node("Split", ["x"], ["a", "b"], name="sp")], X,
                                      [("a", [1, 3, 9, 9]), ("b", [1, 3, 9, 9])]),
                           ['"sp" (Split)', "axis 0: only splitting along channels"]),
    "conv_integer_bias": (onnx_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], X,
                                     [("y", ["N", 4, 7, 7])], [("w", W3), ("b", np.ones(4, np.int64))]),
                          ['"conv" (Conv)', "its bias has dtype int64"]),
    "batch_norm_scale_computed": (onnx_model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                                               name="bn")], [*X, ("s", ["N", 3])], [("y", ["N", 3, 9, 9])],
                                             [("b", randn(3, seed=17)), ("m", randn(3, seed=18)),
                                              ("v", np.ones(3, np.float32))]),
                                  ['"bn" (BatchNormalization)', "its weight must be a constant"]),
    "matmul_integer_weight": (onnx_model([helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                                          helper.make_node("MatMul", ["f", "w"], ["y"], name="mm")], X,
                                         [("y", ["N", 4])], [("w", np.ones((243, 4), np.int64))]),
                              ['"mm" (MatMul)', "its weight has dtype int64"]),
    # a Transpose without perm (all axes reversed) between the Reshapes: not a channel shuffle
    "reshape_transpose_reversed": (reshape_transpose_reshape([0, 3, 1, 9, 9], [0, 3, 9, 9], ["N", 3, 9, 9], perm=None),
        ['"cs/split" (Reshape)', "target shape [0, 3, 1, 9, 9]"]),
    "conv_pads_of_3d": (onnx_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1, 1, 1])],
                                   X, [("y", ["N", 4, 9, 9])], [("w", W3)]),
                        ['"conv" (Conv)', "pads [1, 1, 1, 1, 1, 1] must have 4 values (2-D only)"]),
    "resize_axes": (onnx_model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="nearest", axes=[2, 3])],
                               X, [("y", ["N", 3, 18, 18])], [("s", np.array([2, 2], np.float32))], opset=18),
                    ['"up" (Resize)', "the axes and antialias attributes are not supported"]),
    "resize_antialias": (onnx_model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="linear",
                                                      antialias=1)], X, [("y", ["N", 3, 18, 18])],
                                    [("s", np.array([1, 1, 2, 2], np.float32))], opset=18),
                         ['"up" (Resize)', "the axes and antialias attributes are not supported"]),
    # a Transpose without perm reverses every axis, the batch too
    "transpose_reversed": (onnx_model([helper.make_node("Transpose", ["x"], ["y"], name="tr")], X,
                                      [("y", [9, 9, 3, "N"])]), ['"tr" (Transpose)']),
    "pad_of_two_axes": (onnx_model([helper.make_node("Pad", ["x", "p"], ["y"], name="pad")], X,
                                   [("y", ["N", 3, 11, 11])], [("p", np.array([1, 1, 1, 1], np.int64))]),
                        ['"pad" (Pad)', "pads [1, 1, 1, 1] must have 8 values"]),
    # GELU's formula times 0.25 instead of 0.5: not a GELU (and Erf alone has no layer)
    "gelu_formula_wrong_half": (onnx_model([helper.make_node("Mul", ["x", "rsqrt2"], ["s"], name="g/scale"),
                                            helper.make_node("Erf", ["s"], ["e"], name="g/erf"),
                                            helper.make_node("Add", ["one", "e"], ["p"], name="g/plus"),
                                            helper.make_node("Mul", ["p", "x"], ["px"], name="g/times_x"),
                                            helper.make_node("Mul", ["px", "quarter"], ["y"], name="g/quarter")], X,
                                           [("y", ["N", 3, 9, 9])], [("rsqrt2", np.float32(2 ** -0.5)),
                                                                     ("one", np.float32(1)),
                                                                     ("quarter", np.float32(0.25))]),
                                ['"g/erf" (Erf)', "Erf is supported only in the formula of GELU"]),
    "hardsigmoid_other_beta": (onnx_model([helper.make_node("HardSigmoid", ["x"], ["y"], name="hs", alpha=0.2,
                                                            beta=0.6)], X, [("y", ["N", 3, 9, 9])]),
                               ['"hs" (HardSigmoid)', "HardSigmoid(alpha=0.2, beta=0.6) has no cnngraph layer"]),
    "split_along_width": (onnx_model([helper.make_node("Split", ["x", "sizes"], ["a", "b"], name="sp", axis=3)], X,
                                     [("a", ["N", 3, 9, 4]), ("b", ["N", 3, 9, 5])],
                                     [("sizes", np.array([4, 5], np.int64))]),
                          ['"sp" (Split)', "axis 3: only splitting along channels"]),
    "shuffle_groups_not_dividing": (reshape_transpose_reshape([0, 2, 1, 9, 9], [0, 3, 9, 9], ["N", 3, 9, 9]),
        ["not a channel shuffle of (N,3,9,9)"]),
    "layer_norm_stash_type_0": (onnx_model([helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                                            helper.make_node("LayerNormalization", ["f", "g"], ["y"], name="ln",
                                                             stash_type=0)], X, [("y", ["N", 243])],
                                           [("g", randn(243, seed=15))]),
                                ['"ln" (LayerNormalization)', "only float32 statistics and one output"]),
    "layer_norm_mean_used": (onnx_model([helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                                         helper.make_node("LayerNormalization", ["f", "g"], ["y", "mean"], name="ln")],
                                        X, [("y", ["N", 243]), ("mean", ["N", 1])], [("g", randn(243, seed=16))]),
                             ['"ln" (LayerNormalization)', "only float32 statistics and one output"]),
    # Resize to sizes whose C is the batch size (Shape(x)[0]): not a resize of H and W
    "resize_channels_from_batch": (onnx_model(
        [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
         helper.make_node("Slice", ["shape", "zero", "one"], ["n"], name="n"),
         helper.make_node("Concat", ["n", "n", "hw"], ["sizes"], name="sizes", axis=0),
         helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="up", mode="nearest")], X,
        [("y", ["N", "N", 18, 18])], [("zero", np.array([0], np.int64)), ("one", np.array([1], np.int64)),
                                      ("hw", np.array([18, 18], np.int64))]),
        ['"up" (Resize)', "its sizes for C, H and W depend on the batch size N"]),
    "corrupt_constant": (onnx_model([helper.make_node("Constant", [], ["lo"], name="k", value=_corrupt_tensor()),
                                     helper.make_node("Clip", ["x", "lo"], ["y"], name="clip")], X,
                                    [("y", ["N", 3, 9, 9])]), ['"k" (Constant)', "corrupt"]),
    "custom_domain": (onnx_model([helper.make_node("FusedConv", ["x"], ["y"], name="fc", domain="com.microsoft")], X,
                                 [("y", ["N", 3, 9, 9])]), ['"fc" (com.microsoft.FusedConv)']),
}


@pytest.mark.parametrize("name", sorted(BAD_NODES))
def test_unsupported_attributes(name, tmp_path):
    model, phrases = BAD_NODES[name]
    path = save(model, tmp_path / f"{name}.onnx")
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(path)
    text = one_line_error(excinfo)
    for phrase in phrases:
        assert phrase in text


def test_declared_shape_mismatch(tmp_path):
    path = tmp_path / "lenet5.onnx"
    model = cnngraph.export_onnx(ROOT / "examples" / "lenet5.json", path)
    (info,) = [v for v in model.graph.value_info if v.name == "c3:conv2d"]
    info.type.tensor_type.shape.dim[1].dim_value = 17
    save(model, path)
    with pytest.raises(cnngraph.ShapeError) as excinfo:
        cnngraph.from_onnx(path)
    text = one_line_error(excinfo)
    assert '"c3" (Conv)' in text and "(N,17,10,10)" in text and "(N,16,10,10)" in text


def test_input_without_shape(tmp_path):
    model = onnx_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", ["N", "C", 9, 9])],
                       [("y", ["N", 3, 9, 9])])
    with pytest.raises(cnngraph.SpecError, match='input "x" must have a known shape'):
        cnngraph.from_onnx(save(model, tmp_path / "m.onnx"))


@functools.lru_cache(maxsize=None)
def lenet_bytes() -> bytes:
    return cnngraph.interop.to_onnx(cnngraph.load_spec(ROOT / "examples" / "lenet5.json")).SerializeToString()


@pytest.mark.parametrize("data", [b"", b"not an onnx model at all\n" * 4, bytes(range(256)) * 8, b"\x08"],
                         ids=["empty", "text", "binary", "one_byte"])
def test_malformed_file(data, tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(path)
    assert "bad.onnx" in one_line_error(excinfo)


def test_truncated_files(tmp_path):
    data = lenet_bytes()
    path = tmp_path / "cut.onnx"
    for fraction in (0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999):
        path.write_bytes(data[:int(len(data) * fraction)])
        with pytest.raises(cnngraph.CnnGraphError) as excinfo:
            cnngraph.from_onnx(path)
        assert "cut.onnx" in one_line_error(excinfo)
    for cut in range(1, 64):  # the end of the file holds the graph's inputs, outputs and opset
        path.write_bytes(data[:len(data) - cut])
        with pytest.raises(cnngraph.CnnGraphError) as excinfo:
            cnngraph.from_onnx(path)
        one_line_error(excinfo)


def test_external_data(tmp_path):
    """Weights stored beside the model (models over 2 GB must) are read; a missing data file is one line."""
    model = onnx.load_from_string(lenet_bytes())
    path = tmp_path / "lenet.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="lenet.data", size_threshold=0)
    x = randn(1, 1, 32, 32)
    assert rel_err(run_imported(path, x)[2], run_ort(path, x)) < TOL
    (tmp_path / "lenet.data").unlink()
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(path)
    assert "external data" in one_line_error(excinfo)


def test_malformed_nodes(tmp_path):
    """Hand-made nodes with wrong attribute types or missing inputs and outputs: listed, not a traceback."""
    model = onnx_model([helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape="2"),
                        helper.make_node("Relu", [], ["r"], name="lonely"),
                        helper.make_node("Relu", ["x"], [], name="sink"),
                        helper.make_node("Relu", ["x"], ["y"], name="ok")], X, [("y", ["N", 3, 9, 9])])
    model.graph.node[0].attribute[0].type = onnx.AttributeProto.INTS  # kernel_shape claims ints, holds a string
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(save(model, tmp_path / "m.onnx"))
    text = one_line_error(excinfo)
    assert "3 ONNX node(s)" in text and '"pool" (MaxPool)' in text and '"lonely" (Relu): lacks a data input' in text
    assert '"sink" (Relu): has no output' in text


def test_missing_file(tmp_path):
    with pytest.raises(cnngraph.SpecError, match="cannot read the ONNX model"):
        cnngraph.from_onnx(tmp_path / "nowhere.onnx")


def test_without_onnx_installed(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(cnngraph.CnnGraphError, match="pip install onnx"):
        cnngraph.from_onnx(tmp_path / "m.onnx")
    with pytest.raises(cnngraph.CnnGraphError, match="pip install onnx"):
        cnngraph.export_onnx(ROOT / "examples" / "lenet5.json", tmp_path / "m.onnx")


# --- the commands -------------------------------------------------------------------------------------

def test_cli_import_then_run(capsys, tmp_path):
    model = save(cnngraph.interop.to_onnx(cnngraph.load_spec(ROOT / "examples" / "lenet5.json")),
                 tmp_path / "lenet.onnx")
    spec_path = tmp_path / "lenet.json"
    code, out, err = run_main(capsys, "import-onnx", model, "-o", spec_path)
    assert code == 0, err
    weights_path = tmp_path / "lenet.safetensors"
    assert f"wrote {spec_path}" in out and f"wrote {weights_path}" in out
    assert json.loads(spec_path.read_text())["layers"][0] == {"op": "conv2d", "name": "c1", "out_channels": 6,
                                                             "kernel_size": 5, "activation": "relu"}
    x = randn(2, 1, 32, 32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_main(capsys, "run", spec_path, "--weights", weights_path, "--input", tmp_path / "x.npy",
                              "--device", "cpu", "--output", tmp_path / "y.npy")
    assert code == 0, err
    assert rel_err(np.load(tmp_path / "y.npy"), run_ort(model, x)) < TOL


def test_cli_import_weights_out(capsys, tmp_path):
    model = save(cnngraph.interop.to_onnx(cnngraph.load_spec(ROOT / "examples" / "lenet5.json")), tmp_path / "m.onnx")
    code, out, err = run_main(capsys, "import-onnx", model, "-o", tmp_path / "s.json", "--weights-out",
                              tmp_path / "w.npz")
    assert code == 0, err
    assert set(np.load(tmp_path / "w.npz")) == set(cnngraph.compile(ROOT / "examples" / "lenet5.json").weights)
    code, _, err = run_main(capsys, "import-onnx", model, "-o", tmp_path / "s.safetensors")
    assert code == 2 and "the spec and the weights would be the same file" in err
    assert not (tmp_path / "s.safetensors").exists()


def test_cli_export(capsys, tmp_path):
    weights = tmp_path / "w.safetensors"
    cnngraph.save_weights(random_weights(example("lenet5")), weights)
    out_path = tmp_path / "lenet.onnx"
    code, out, err = run_main(capsys, "export-onnx", ROOT / "examples" / "lenet5.json", "-o", out_path,
                              "--weights", weights)
    assert code == 0, err
    assert f"wrote {out_path}" in out and "opset 17" in out and "annotated" in out
    onnx.checker.check_model(onnx.load(str(out_path)), full_check=True)
    code, out, err = run_main(capsys, "export-onnx", ROOT / "examples" / "lenet5.json", "-o", out_path,
                              "--no-annotate")
    assert code == 0 and "annotated" not in out and "seeded random weights" in out


@pytest.mark.parametrize("make, phrases", [
    (lambda p: p.write_bytes(lenet_bytes()[:2000]), ["m.onnx", "truncated"]),
    (lambda p: save(onnx_model([helper.make_node("Sin", ["x"], ["y"], name="sine")], X, [("y", ["N", 3, 9, 9])]), p),
     ['"sine" (Sin)']),
    (lambda p: None, ["cannot read"]),
])
def test_cli_import_errors_are_one_line(capsys, tmp_path, make, phrases):
    make(tmp_path / "m.onnx")
    code, out, err = run_main(capsys, "import-onnx", tmp_path / "m.onnx", "-o", tmp_path / "s.json")
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert all(phrase in err for phrase in phrases), err
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "s.safetensors").exists()


def test_cli_export_errors_are_one_line(capsys, tmp_path):
    code, out, err = run_main(capsys, "export-onnx", ROOT / "examples" / "lenet5.json", "-o",
                              tmp_path / "no" / "m.onnx")
    assert code == 2 and err.count("\n") == 1 and "cannot write" in err, err


def test_supported_ops_are_documented():
    readme = (ROOT / "README.md").read_text()
    documented = [op for op in SUPPORTED_OPS if op not in ("Constant", "Shape", "Gather", "Unsqueeze", "Squeeze",
                                                          "Cast", "Mul", "Div", "Erf")]
    for op in documented:
        assert f"`{op}`" in readme, op


# --- names the exporter makes up never collide with the user's -------------------------------------

def _image_net(layers, input_name="x"):
    return {"format_version": 1, "name": "names", "inputs": [{"name": input_name, "shape": [3, 6, 6]}],
            "layers": layers}


COLLISIONS = {
    "layer_named_like_a_weight": _image_net([
        {"op": "conv2d", "name": "c", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"op": "relu", "name": "c.weight"}]),
    "layer_named_like_a_fused_activation_tensor": _image_net([
        {"op": "conv2d", "name": "c", "out_channels": 4, "kernel_size": 3, "padding": 1, "activation": "relu"},
        {"op": "sigmoid", "name": "c:conv2d"}]),
    "input_named_like_a_bias": _image_net([
        {"op": "conv2d", "name": "c", "out_channels": 4, "kernel_size": 3, "padding": 1}], input_name="c.bias"),
    "layer_named_like_a_constant": _image_net([
        {"op": "relu6", "name": "r"}, {"op": "conv2d", "name": "r:max", "out_channels": 2, "kernel_size": 1},
        {"op": "hardswish", "name": "r:min"}]),
    "activation_field_named_like_the_next_layer": _image_net([
        {"op": "conv2d", "name": "a", "out_channels": 4, "kernel_size": 1, "activation": "silu"},
        {"op": "conv2d", "name": "a:silu", "out_channels": 4, "kernel_size": 1},
        {"op": "conv2d", "name": "a:sigmoid", "out_channels": 4, "kernel_size": 1, "activation": "relu6"}]),
}


@pytest.mark.parametrize("case", sorted(COLLISIONS))
def test_exported_names_never_collide_and_the_model_runs(tmp_path, case):
    import onnx

    spec = COLLISIONS[case]
    path = tmp_path / "m.onnx"
    cnngraph.export_onnx(spec, path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    produced = [o for n in model.graph.node for o in n.output] + [i.name for i in model.graph.initializer] + \
        [i.name for i in model.graph.input]
    assert len(produced) == len(set(produced)), sorted(n for n in produced if produced.count(n) > 1)
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {spec["inputs"][0]["name"]: x})[0]
    want = cnngraph.compile(spec, device="cpu")(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("annotate", [np.ones(2), "yes", None, 1])
def test_export_annotate_must_be_a_flag(tmp_path, annotate):
    with pytest.raises(cnngraph.SpecError, match="annotate must be True or False"):
        cnngraph.export_onnx(COLLISIONS["input_named_like_a_bias"], tmp_path / "m.onnx", annotate=annotate)
    assert not (tmp_path / "m.onnx").exists()
