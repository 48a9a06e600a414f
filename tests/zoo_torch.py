"""Plain-PyTorch mirrors of six torchvision classifiers, for tests/test_zoo.py, and the small modules
the ONNX tests build blocks from (`Fn`, `Permute`).

torchvision itself cannot be imported in the test environment, so these modules rebuild
MobileNetV3-Large, EfficientNet-B0, ShuffleNetV2 x1.0, DenseNet-121 and ConvNeXt-Tiny with the same
module tree: `model.state_dict()` has exactly torchvision's keys and shapes, which are the weight keys
of the specs in examples/ (written by examples/generate_zoo.py). Inference only: stochastic depth
and dropout are left out or kept as the identity they are in eval mode.

`randomized_state(model, seed)` gives every batch norm, layer norm and layer scale non-trivial values
(a test cannot pass by luck on identity-like parameters) and returns the state dict as float32 arrays.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never down by more than 10% (torchvision's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_norm_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act=None, eps: float = 1e-5):
    """Conv2dNormActivation: children 0 (conv, no bias), 1 (batch norm), 2 (activation, if any)."""
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=eps)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int, act, gate):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))  # (N, C, 1, 1)
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV3's and EfficientNet's (MBConv) block: [expand] depthwise [SE] project, + input."""

    def __init__(self, cin, k, exp, cout, stride, act, se=None, eps=1e-5):
        super().__init__()
        layers = [conv_norm_act(cin, exp, 1, act=act, eps=eps)] if exp != cin else []
        layers.append(conv_norm_act(exp, exp, k, stride, groups=exp, act=act, eps=eps))
        if se is not None:
            layers.append(se)
        layers.append(conv_norm_act(exp, cout, 1, eps=eps))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return y + x if self.residual else y


class Classifier(nn.Module):
    """features -> global average pool -> [flatten] -> classifier (MobileNetV3, EfficientNet, ConvNeXt,
    whose classifier flattens by itself)."""

    def __init__(self, features, classifier, flatten: bool = True):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier
        self.flatten = flatten

    def forward(self, x):
        x = self.avgpool(self.features(x))  # (N, C, 1, 1)
        return self.classifier(torch.flatten(x, 1) if self.flatten else x)


# --- MobileNetV3-Large ---------------------------------------------------------------------------

MOBILENET_V3_LARGE = [  # cin, kernel, expanded, cout, SE, hardswish, stride
    (16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1),
]


def mobilenet_v3_large(num_classes: int = 1000) -> nn.Module:
    eps = 1e-3
    features = [conv_norm_act(3, 16, 3, 2, act=nn.Hardswish, eps=eps)]
    for cin, k, exp, cout, use_se, hs, stride in MOBILENET_V3_LARGE:
        se = SqueezeExcitation(exp, make_divisible(exp // 4), nn.ReLU, nn.Hardsigmoid) if use_se else None
        features.append(InvertedResidual(cin, k, exp, cout, stride, nn.Hardswish if hs else nn.ReLU, se, eps))
    features.append(conv_norm_act(160, 960, 1, act=nn.Hardswish, eps=eps))
    head = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1280, num_classes))
    return Classifier(nn.Sequential(*features), head)


# --- EfficientNet-B0 -----------------------------------------------------------------------------

EFFICIENTNET_B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                   (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]  # ratio, k, s, cin, cout, n


def efficientnet_b0(num_classes: int = 1000) -> nn.Module:
    features = [conv_norm_act(3, 32, 3, 2, act=nn.SiLU)]
    for ratio, k, stride, cin, cout, n in EFFICIENTNET_B0:
        stage = []
        for b in range(n):
            c, s = (cin, stride) if b == 0 else (cout, 1)
            exp = make_divisible(c * ratio)
            se = SqueezeExcitation(exp, max(1, c // 4), nn.SiLU, nn.Sigmoid)
            stage.append(InvertedResidual(c, k, exp, cout, s, nn.SiLU, se))
        features.append(nn.Sequential(*stage))
    features.append(conv_norm_act(320, 1280, 1, act=nn.SiLU))
    return Classifier(nn.Sequential(*features), nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes)))


# --- ShuffleNetV2 x1.0 ---------------------------------------------------------------------------

def channel_shuffle(x, groups: int):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin if stride > 1 else half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024), num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                   nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = channels[0]
        for i, (n, cout) in enumerate(zip(repeats, channels[1:4]), start=2):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            cin = cout
        self.conv5 = nn.Sequential(nn.Conv2d(cin, channels[4], 1, bias=False), nn.BatchNorm2d(channels[4]), nn.ReLU())
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.fc(self.conv5(x).mean([2, 3]))


# --- DenseNet-121 --------------------------------------------------------------------------------

class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n: int, cin: int, growth: int, bn_size: int):
        super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth, growth, bn_size) for i in range(n)})

    def forward(self, x):
        for layer in self.values():
            x = torch.cat([x, layer(x)], 1)
        return x


class DenseNet(nn.Module):
    def __init__(self, growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4, num_classes: int = 1000):
        super().__init__()
        mods = OrderedDict(conv0=nn.Conv2d(3, init, 7, 2, 3, bias=False), norm0=nn.BatchNorm2d(init),
                           relu0=nn.ReLU(), pool0=nn.MaxPool2d(3, 2, 1))
        c = init
        for i, n in enumerate(blocks, start=1):
            mods[f"denseblock{i}"] = DenseBlock(n, c, growth, bn_size)
            c += n * growth
            if i < len(blocks):
                mods[f"transition{i}"] = nn.Sequential(OrderedDict(
                    norm=nn.BatchNorm2d(c), relu=nn.ReLU(), conv=nn.Conv2d(c, c // 2, 1, bias=False),
                    pool=nn.AvgPool2d(2, 2)))
                c //= 2
        mods["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(mods)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.features(x)), 1)
        return self.classifier(torch.flatten(x, 1))


# --- small modules for writing blocks inline --------------------------------------------------

class Fn(nn.Module):
    """forward = fn(self, x), with the given child modules (their names become layer names)."""

    def __init__(self, fn, **children):
        super().__init__()
        self.fn = fn
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x):
        return self.fn(self, x)


def torch_export(module, x: np.ndarray, path, opset: int = 17, dynamic: bool = True):
    """The TorchScript exporter (`dynamo=False`: the dynamo one needs onnxscript), batch axis named N."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.from_numpy(x),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}} if dynamic else None)
    return path


def max_rel_err(out, ref) -> float:
    """max |out - ref| / max |ref|."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    scale = np.abs(ref).max()
    assert scale > 0
    return float(np.abs(out - ref).max() / scale)


# --- ConvNeXt-Tiny -------------------------------------------------------------------------------

class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float = 1e-6):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]), nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))

    def forward(self, x):
        return self.layer_scale * self.block(x) + x  # stochastic depth: identity at inference


def convnext_tiny(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3), num_classes: int = 1000) -> nn.Module:
    features = [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))]
    for s, (dim, depth) in enumerate(zip(dims, depths)):
        if s > 0:
            features.append(nn.Sequential(LayerNorm2d(dims[s - 1], eps=1e-6), nn.Conv2d(dims[s - 1], dim, 2, 2)))
        features.append(nn.Sequential(*[CNBlock(dim) for _ in range(depth)]))
    head = nn.Sequential(LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[-1], num_classes))
    return Classifier(nn.Sequential(*features), head, flatten=False)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block: 1x1 reduce, 3x3 (the stride), 1x1 expand by 4, the shortcut."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        cin = 64
        for s, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            layers = []
            for b in range(count):
                layers.append(Bottleneck(cin, width, 2 if b == 0 and s > 1 else 1))
                cin = 4 * width
            setattr(self, f"layer{s}", nn.Sequential(*layers))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


MODELS = {
    "mobilenet_v3_large": mobilenet_v3_large,
    "efficientnet_b0": efficientnet_b0,
    "shufflenet_v2": ShuffleNetV2,
    "densenet121": DenseNet,
    "convnext_tiny": convnext_tiny,
    "resnet50": ResNet50,
}


# --- weights -------------------------------------------------------------------------------------

@torch.no_grad()
def randomized_state(model: nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """Give `model` parameters far from identity and return its state dict as float32 NumPy arrays
    (without `num_batches_tracked`). Norm affines and layer scales are drawn at random; batch-norm
    running statistics are measured on a random batch of two 224x224 images (another batch than any
    test feeds), so activations keep a sane scale through a deep network, as in a trained one."""
    g = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g, dtype=t.dtype))

    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            uniform(m.weight, 0.5, 1.5)
            uniform(m.bias, -0.3, 0.3)
        if isinstance(m, CNBlock):
            uniform(m.layer_scale, 0.1, 1.0)
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if batch_norms:
        for m in batch_norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
        model.train()
        model(torch.randn(2, 3, 224, 224, generator=g))
    model.eval()
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}
