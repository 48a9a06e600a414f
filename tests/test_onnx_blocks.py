"""Interop with what PyTorch's ONNX exporter really writes, block by block.

Small blocks of well-known networks (squeeze-excitation, MobileNetV3, ShuffleNetV2, ConvNeXt pieces,
DenseNet, FCN heads, TensorFlow-"SAME" padding, clamps and broadcasting arithmetic) are written in
plain PyTorch (as torchvision writes them, without importing it), exported with the TorchScript
exporter at opset 13 and 17 with a dynamic batch axis, and once at opset 17 without it (PyTorch
then folds the shape arithmetic into constants), imported with `cnngraph.from_onnx`, compiled on
the NumPy backend and on OpenCL (PoCL on the CPU; skipped without a device), and run on a fresh
random input. The output must match PyTorch's: max |out - ref| / max |ref| <= 1e-4.

Every export and import is made once and shared by the devices; shapes are tiny (CI has 2 cores).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import cnngraph  # noqa: E402
from test_backends import OPENCL_REASON  # noqa: E402
from zoo_torch import Fn, Permute, max_rel_err, torch_export  # noqa: E402

TOL = 1e-4
BATCH = 2
SHAPE = (BATCH, 8, 8, 8)

DEVICES = ["cpu", pytest.param("opencl", marks=pytest.mark.skipif(OPENCL_REASON is not None,
                                                                   reason=str(OPENCL_REASON)))]
# (id, opset, dynamic batch axis)
EXPORTS = [("opset13", 13, True), ("opset17", 17, True), ("opset17_static", 17, False)]


def randn(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- building blocks, written as torchvision writes them ------------------------------------------------

def bn(channels: int) -> nn.BatchNorm2d:
    """A batch norm with random statistics and affine parameters (not the defaults 0 and 1)."""
    norm = nn.BatchNorm2d(channels)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.5)
        norm.running_mean.normal_(0, 0.5)
        norm.running_var.uniform_(0.5, 1.5)
    return norm


def conv_bn(cin, cout, k=1, stride=1, groups=1, act=None) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), bn(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation, with the pooling, activations and product order as parameters."""

    def __init__(self, channels, squeeze, act=nn.ReLU, gate=nn.Sigmoid, pool="adaptive", gate_first=False):
        super().__init__()
        self.pool = pool
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = gate()
        self.gate_first = gate_first

    def forward(self, x):
        s = self.avgpool(x) if self.pool == "adaptive" else x.mean((2, 3), keepdim=True)
        s = self.scale_activation(self.fc2(self.activation(self.fc1(s))))
        return s * x if self.gate_first else x * s


class LinearSE(nn.Module):
    """The classic SE-Net block: pool, flatten, two Linear layers, the gate viewed back as (N, C, 1, 1)."""

    def __init__(self, channels, squeeze, unsqueeze="view"):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, squeeze), nn.ReLU(inplace=True), nn.Linear(squeeze, channels),
                                nn.Sigmoid())
        self.unsqueeze = unsqueeze

    def forward(self, x):
        b, c, _, _ = x.size()
        s = self.fc(torch.flatten(self.avgpool(x), 1))
        s = s.view(b, c, 1, 1) if self.unsqueeze == "view" else s[:, :, None, None]
        return x * s


class InvertedResidualV3(nn.Module):
    """torchvision's MobileNetV3 InvertedResidual (expand, depthwise, SE with hardsigmoid, project, add)."""

    def __init__(self, cin=8, expanded=16):
        super().__init__()
        self.block = nn.Sequential(
            conv_bn(cin, expanded, 1, act=nn.Hardswish),
            conv_bn(expanded, expanded, 3, groups=expanded, act=nn.Hardswish),
            SqueezeExcitation(expanded, 8, gate=nn.Hardsigmoid),
            conv_bn(expanded, cin, 1))

    def forward(self, x):
        return self.block(x) + x


def channel_shuffle(x, groups: int):
    """torchvision.models.shufflenetv2.channel_shuffle, verbatim."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, -1, height, width)
    return x


class ShuffleUnit(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual; `split` picks how the stride-1 unit divides its input:
    x.chunk(2, dim=1), torch.split(x, [3, 5], 1), x[:, :4] and x[:, 4:], or x[:, :3] and x[:, 3:]."""

    def __init__(self, cin=8, cout=8, stride=1, split="chunk"):
        super().__init__()
        self.stride, self.split = stride, split
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, half, 1, act=nn.ReLU))
            inner = outer = half
            branch_in = cin
        else:  # branch2 reads (and writes) the second part
            inner, outer = half, (cin - 3 if split in ("split_uneven", "index_uneven") else half)
            branch_in = outer
        self.branch2 = nn.Sequential(conv_bn(branch_in, inner, 1, act=nn.ReLU),
                                     conv_bn(inner, inner, 3, stride, groups=inner),
                                     conv_bn(inner, outer, 1, act=nn.ReLU))

    def forward(self, x):
        if self.stride > 1:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        else:
            if self.split == "chunk":
                x1, x2 = x.chunk(2, dim=1)
            elif self.split == "split_uneven":
                x1, x2 = torch.split(x, [3, 5], 1)
            elif self.split == "index":
                x1, x2 = x[:, :4], x[:, 4:]
            else:  # index_uneven
                x1, x2 = x[:, :3], x[:, 3:]
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        return channel_shuffle(out, 2)


class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d, verbatim."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


def layer_norm2d(channels: int) -> LayerNorm2d:
    norm = LayerNorm2d(channels, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.5)
    return norm


class LayerScale(nn.Module):
    """ConvNeXt's layer scale, gamma * x with gamma an nn.Parameter of shape (C, 1, 1), on a residual."""

    def __init__(self, channels=8):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.layer_scale = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)

    def forward(self, x):
        return self.layer_scale * self.conv(x) + x


class CNBlock(nn.Module):
    """torchvision's ConvNeXt CNBlock: its Linear layers run on the channels-last view."""

    def __init__(self, dim=8):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]),
                                   nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
                                   nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.rand(dim, 1, 1))

    def forward(self, x):
        return self.layer_scale * self.block(x) + x


class ChannelsLastGamma(nn.Module):
    """The original ConvNeXt block's layer scale: gamma (C,) times the channels-last tensor, before
    the permute back."""

    def __init__(self, dim=8):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        return (self.gamma * self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DenseLayer(nn.Module):
    """torchvision's DenseNet _DenseLayer: its input is a list of tensors, concatenated first."""

    def __init__(self, cin=8, growth=4, bn_size=2):
        super().__init__()
        self.norm1, self.relu1 = bn(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = bn(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, inputs):
        concated = torch.cat(inputs, 1)
        bottleneck = self.conv1(self.relu1(self.norm1(concated)))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class DenseBlock(nn.Module):
    """Two dense layers: the first reads torch.cat([x], 1), the second torch.cat([x, new], 1)."""

    def __init__(self, cin=8, growth=4):
        super().__init__()
        self.denselayer1 = DenseLayer(cin, growth)
        self.denselayer2 = DenseLayer(cin + growth, growth)

    def forward(self, x):
        features = [x]
        for layer in (self.denselayer1, self.denselayer2):
            features.append(layer(features))
        return torch.cat(features, 1)


def interpolate(mode, **kw):
    """An FCN-style head: a stride-2 conv (depthwise: quick to build on PoCL), then resized back to the
    input's size (shape arithmetic on x), to a fixed size or by a factor."""
    def forward(m, x):
        y = m.classifier(x)
        size = kw.get("size")
        if size == "input":
            size = x.shape[-2:]
        return F.interpolate(y, size=size, scale_factor=kw.get("scale_factor"), mode=mode,
                             align_corners=kw.get("align_corners"))
    return lambda: Fn(forward, classifier=nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, groups=8), nn.ReLU()))


def se(**kw):
    return lambda: SqueezeExcitation(8, 4, **kw)


def arithmetic(op: str):
    """Two computed tensors broadcast against each other: (N,C,H,W) and (N,C,1,1) or (N,1,H,W)."""
    def forward(m, x):
        a = torch.tanh(x)
        g = torch.sigmoid(x.mean((2, 3), keepdim=True))  # (N, C, 1, 1), in (0, 1)
        if op == "mul":
            return a * g
        if op == "mul_spatial":
            return a * torch.sigmoid(m.spatial(x))  # (N, 1, H, W): CBAM's spatial attention
        if op == "sub":
            return a - g
        if op == "sub_reversed":
            return g - a
        if op == "div":
            return a / g
        return g / torch.sigmoid(a)  # div_reversed
    return lambda: Fn(forward, spatial=nn.Conv2d(8, 1, 3, padding=1))


def pad_conv(pad, groups=1):
    return lambda: Fn(lambda m, x: m.conv(pad(x)), conv=nn.Conv2d(8, 8, 3, stride=2, groups=groups))


# (id, module factory, layer ops the import must produce, among others); every input is SHAPE
BLOCKS = [
    # squeeze-excitation: pool or mean, ReLU or SiLU, Sigmoid or Hardsigmoid, x * s or s * x
    ("se_pool_relu_sigmoid_x_s", se(), {"global_avg_pool2d", "relu", "sigmoid", "mul"}),
    ("se_pool_silu_hardsigmoid_s_x", se(act=nn.SiLU, gate=nn.Hardsigmoid, gate_first=True),
     {"global_avg_pool2d", "silu", "hardsigmoid", "mul"}),
    ("se_mean_relu_hardsigmoid_s_x", se(pool="mean", gate=nn.Hardsigmoid, gate_first=True),
     {"mean", "relu", "hardsigmoid", "mul"}),
    ("se_mean_silu_sigmoid_x_s", se(pool="mean", act=nn.SiLU), {"mean", "silu", "sigmoid", "mul"}),
    ("mean_negative_dims_gate", lambda: Fn(lambda m, x: x * torch.sigmoid(x.mean((-2, -1), keepdim=True))),
     {"mean", "mul"}),
    ("mean_head_linear", lambda: Fn(lambda m, x: m.fc(x.mean((2, 3))), fc=nn.Linear(8, 5)),
     {"mean", "linear"}),
    # MobileNetV3 (opset 13 has no HardSwish: PyTorch writes x * HardSigmoid(x))
    ("mobilenet_v3_inverted_residual", InvertedResidualV3,
     {"global_avg_pool2d", "hardsigmoid", "mul", "add"}),
    # ShuffleNetV2: chunk (Split), split sizes (Split), indexing (Slice); torchvision's channel shuffle
    ("shufflenet_unit_chunk", lambda: ShuffleUnit(split="chunk"), {"slice", "concat", "channel_shuffle"}),
    ("shufflenet_unit_split_uneven", lambda: ShuffleUnit(split="split_uneven"),
     {"slice", "concat", "channel_shuffle"}),
    ("shufflenet_unit_index", lambda: ShuffleUnit(split="index"), {"slice", "concat", "channel_shuffle"}),
    ("shufflenet_unit_index_uneven", lambda: ShuffleUnit(split="index_uneven"),
     {"slice", "concat", "channel_shuffle"}),
    ("slice_negative_start", lambda: Fn(lambda m, x: x[:, -3:]), {"slice"}),
    ("shufflenet_unit_stride2", lambda: ShuffleUnit(8, 16, stride=2), {"concat", "channel_shuffle"}),
    ("channel_shuffle_groups4", lambda: Fn(lambda m, x: channel_shuffle(x, 4)), {"channel_shuffle"}),
    # ConvNeXt pieces (opset 13 has no LayerNormalization: PyTorch writes its formula)
    ("convnext_layer_norm2d", lambda: layer_norm2d(8), {"layer_norm"}),
    # the whole block: LayerNorm and two Linears on the channels-last view become layer_norm and 1x1 convs
    ("convnext_cnblock", CNBlock, {"layer_norm", "conv2d", "scale", "add"}),
    ("convnext_channels_last_gamma", ChannelsLastGamma, {"conv2d", "scale"}),
    # SE-Net's Linear gate, viewed back as (N, C, 1, 1): a Reshape, or an Unsqueeze, of a computed vector
    ("se_linear_view", lambda: LinearSE(8, 4, "view"), {"linear", "reshape", "mul"}),
    ("se_linear_none_index", lambda: LinearSE(8, 4, "index"), {"linear", "reshape", "mul"}),
    ("convnext_layer_norm2d_after_dwconv", lambda: nn.Sequential(nn.Conv2d(8, 8, 7, padding=3, groups=8),
                                                                 layer_norm2d(8)), {"layer_norm"}),
    ("layer_norm_vector", lambda: nn.Sequential(nn.Flatten(), nn.LayerNorm(512)), {"layer_norm"}),
    ("convnext_layer_scale", LayerScale, {"scale", "add"}),
    ("scale_mul_constant", lambda: Fn(lambda m, x: m.conv(x) * 0.5, conv=nn.Conv2d(8, 8, 1)), {"scale"}),
    ("scale_constant_mul", lambda: Fn(lambda m, x: 0.5 * m.conv(x), conv=nn.Conv2d(8, 8, 1)), {"scale"}),
    ("scale_div_constant", lambda: Fn(lambda m, x: m.conv(x) / 2.0, conv=nn.Conv2d(8, 8, 1)), {"scale"}),
    # DenseNet: the first layer reads torch.cat([x], 1), the second torch.cat([x, new], 1)
    ("densenet_block", DenseBlock, {"batch_norm2d", "relu", "concat"}),
    # FCN / segmentation heads
    ("fcn_bilinear_to_input_size", interpolate("bilinear", size="input", align_corners=False),
     {"upsample2d"}),
    ("fcn_bilinear_to_input_size_align", interpolate("bilinear", size="input", align_corners=True),
     {"upsample2d"}),
    ("fcn_bilinear_to_fixed_size", interpolate("bilinear", size=(11, 13), align_corners=False),
     {"upsample2d"}),
    ("fcn_bilinear_to_fixed_size_align", interpolate("bilinear", size=(11, 13), align_corners=True),
     {"upsample2d"}),
    ("fcn_bilinear_x2", interpolate("bilinear", scale_factor=2, align_corners=False), {"upsample2d"}),
    ("fcn_bilinear_x2_align", interpolate("bilinear", scale_factor=2, align_corners=True), {"upsample2d"}),
    ("fcn_nearest_to_input_size", interpolate("nearest", size="input"), {"upsample2d"}),
    ("fcn_nearest_to_fixed_size", interpolate("nearest", size=(8, 12)), {"upsample2d"}),
    # TensorFlow-"SAME" and other padding (Conv with asymmetric pads: test_conv_asymmetric_pads)
    ("tf_same_pad_stride2_conv", pad_conv(lambda x: F.pad(x, (0, 1, 0, 1))), {"pad", "conv2d"}),
    ("tf_same_pad_stride2_dwconv", pad_conv(lambda x: F.pad(x, (0, 1, 0, 1)), groups=8), {"pad", "conv2d"}),
    ("zero_pad2d", lambda: nn.ZeroPad2d((1, 2, 0, 1)), {"pad"}),
    ("constant_pad2d_value", lambda: nn.ConstantPad2d((1, 0, 2, 1), 0.5), {"pad"}),
    ("reflection_pad2d", lambda: nn.ReflectionPad2d((2, 0, 1, 3)), {"pad"}),
    ("replication_pad2d", lambda: nn.ReplicationPad2d((1, 0, 2, 1)), {"pad"}),
    ("conv_same_even_kernel", lambda: nn.Conv2d(8, 6, 4, padding="same"), {"conv2d"}),
    # clamps, gates and broadcasting arithmetic of two computed tensors
    ("hardtanh", lambda: nn.Hardtanh(-2.0, 2.0), {"clamp"}),  # ONNX Clip: a clamp layer
    ("clamp_min_max", lambda: Fn(lambda m, x: torch.clamp(m.conv(x), -0.5, 1.5), conv=nn.Conv2d(8, 8, 1)),
     {"clamp"}),
    ("clamp_min_only", lambda: Fn(lambda m, x: torch.clamp(x, min=-0.5)), {"clamp"}),
    ("clamp_max_only", lambda: Fn(lambda m, x: torch.clamp(x, max=0.5)), {"clamp"}),
    ("hardsigmoid", nn.Hardsigmoid, {"hardsigmoid"}),
    ("conv_hardsigmoid", lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Hardsigmoid()),
     {"hardsigmoid"}),
    ("mul_broadcast_channels", arithmetic("mul"), {"mean", "mul"}),
    ("mul_broadcast_spatial", arithmetic("mul_spatial"), {"conv2d", "mul"}),
    ("sub_broadcast", arithmetic("sub"), {"mean", "sub"}),
    ("sub_broadcast_reversed", arithmetic("sub_reversed"), {"mean", "sub"}),
    ("div_broadcast", arithmetic("div"), {"mean", "div"}),
    ("div_broadcast_reversed", arithmetic("div_reversed"), {"mean", "div"}),
]
BLOCK_IDS = [b[0] for b in BLOCKS]
assert len(set(BLOCK_IDS)) == len(BLOCK_IDS)
BY_NAME = {b[0]: b for b in BLOCKS}


@functools.lru_cache(maxsize=None)
def block(name: str) -> nn.Module:
    torch.manual_seed(sum(map(ord, name)))
    return BY_NAME[name][1]().eval()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(spec, weights) of a block exported one way, made once for every device."""
    folder = tmp_path_factory.mktemp("onnx_blocks")

    @functools.lru_cache(maxsize=None)
    def get(name: str, export_id: str):
        (opset, dynamic), = [(o, d) for i, o, d in EXPORTS if i == export_id]
        path = torch_export(block(name), randn(SHAPE, seed=1), folder / f"{name}_{export_id}.onnx", opset,
                      dynamic)
        return cnngraph.from_onnx(path)

    return get


@functools.lru_cache(maxsize=None)
def reference(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A fresh random input (not the one exported with) and PyTorch's output for it."""
    x = randn(SHAPE, seed=2)
    with torch.no_grad():
        return x, block(name)(torch.from_numpy(x)).numpy()


def ops_of(spec) -> set[str]:
    """The layer ops of a spec and the activations fused into its conv and linear layers."""
    return {layer.op for layer in spec.layers} | {layer.activation.op for layer in spec.layers
                                                  if getattr(layer, "activation", None) is not None}


def run(spec, weights, x, device) -> np.ndarray:
    y = cnngraph.compile(spec, batch_size=x.shape[0], weights=weights, device=device)(x)
    return y.get() if hasattr(y, "get") else y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("export_id", [e[0] for e in EXPORTS])
@pytest.mark.parametrize("name", BLOCK_IDS)
def test_block(name, export_id, device, imported):
    spec, weights = imported(name, export_id)
    x, expected = reference(name)
    err = max_rel_err(run(spec, weights, x, device), expected)
    layers = [layer.op for layer in spec.layers]
    assert err <= TOL, f"{name} ({export_id}, {device}): relative error {err:.2e}; layers {layers}"
    missing = BY_NAME[name][2] - ops_of(spec)
    assert not missing, f"{name} ({export_id}): expected {sorted(missing)} among the imported ops {layers}"


# --- Conv with asymmetric pads: PyTorch never writes one (it exports F.pad as Pad), TensorFlow does -------

# (id, ONNX pads [top, left, bottom, right], kernel, stride, the layer ops expected)
ASYMMETRIC = [
    ("tf_same_stride2", [0, 0, 1, 1], 3, 2, ["conv2d"]),  # TensorFlow's "SAME" on an even size at stride 2
    ("begin_heavy", [2, 0, 1, 1], 3, 1, ["conv2d"]),
    # "SAME" for an even kernel (the extra row and column at the end) is PyTorch's padding="same"
    ("same_even_kernel", [1, 1, 2, 2], 4, 1, ["conv2d"]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
@pytest.mark.parametrize("case", ASYMMETRIC, ids=[c[0] for c in ASYMMETRIC])
def test_conv_asymmetric_pads(case, dynamic, device, tmp_path):
    name, pads, k, stride, ops = case
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 8, k, k)).astype(np.float32) * 0.3
    b = rng.standard_normal(6).astype(np.float32)
    top, left, bottom, right = pads
    x = randn(SHAPE, seed=4)
    with torch.no_grad():
        expected = F.conv2d(F.pad(torch.from_numpy(x), (left, right, top, bottom)), torch.from_numpy(w),
                            torch.from_numpy(b), stride=stride).numpy()
    batch = "N" if dynamic else BATCH
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["y"], name="conv", kernel_shape=[k, k],
                          pads=pads, strides=[stride, stride])], "asymmetric",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *SHAPE[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, *expected.shape[1:]])],
        initializer=[numpy_helper.from_array(w, "conv.weight"), numpy_helper.from_array(b, "conv.bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    spec, weights = cnngraph.from_onnx(path)
    assert max_rel_err(run(spec, weights, x, device), expected) <= TOL
    assert [layer.op for layer in spec.layers] == ops


# --- blocks that do not import yet: one clean line naming the nodes, never a traceback --------------------

UNSUPPORTED = [
    # a channels-last view read by an op that does not compute per pixel over the channels
    ("channels_last_flatten", lambda: Fn(lambda m, x: m.fc(x.permute(0, 2, 3, 1).flatten(1)), fc=nn.Linear(512, 3)),
     ["(Flatten)", "channels-last view", "not flatten"]),
]


@pytest.mark.parametrize("export_id", [e[0] for e in EXPORTS])
@pytest.mark.parametrize("case", UNSUPPORTED, ids=[c[0] for c in UNSUPPORTED])
def test_unsupported_block_is_one_line(case, export_id, tmp_path):
    name, factory, phrases = case
    (opset, dynamic), = [(o, d) for i, o, d in EXPORTS if i == export_id]
    torch.manual_seed(0)
    path = torch_export(factory(), randn(SHAPE, seed=1), tmp_path / f"{name}.onnx", opset, dynamic)
    with pytest.raises(cnngraph.SpecError) as excinfo:
        cnngraph.from_onnx(path)
    text = str(excinfo.value)
    assert "\n" not in text and "Traceback" not in text, text
    assert str(path) in text and "cannot be expressed in cnngraph" in text, text
    for phrase in phrases:
        assert phrase in text, text
