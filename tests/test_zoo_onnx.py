"""Whole torchvision classifiers through ONNX: every network imports, compiles and matches PyTorch.

The plain-PyTorch mirrors of tests/zoo_torch.py (MobileNetV3-Large, EfficientNet-B0, ShuffleNetV2
x1.0, DenseNet-121, ConvNeXt-Tiny) and three more written compactly here with torchvision's module
trees (ResNeXt-50 32x4d, RegNetY-400MF, MNASNet 1.0) get a randomized state (`randomized_state`:
non-trivial norms, running statistics of a real batch), are exported by PyTorch's TorchScript
exporter at opset 17 and 13 with a dynamic batch axis, imported with `cnngraph.from_onnx`, compiled
at batch 2 and run on a fresh random input. The output must match PyTorch's (float64, and float32)
to max |out - ref| / max |ref| <= 1e-4.

- On the NumPy backend for every network and opset.
- On OpenCL (PoCL on the CPU), marked slow (`python -m pytest -m slow tests/test_zoo_onnx.py`): each
  network compiles dozens to hundreds of kernels there; even ShuffleNetV2, the smallest, takes ~45 s
  on 2 cores with a cold PoCL kernel cache.
- Weight keys: the importer names layers after PyTorch's modules, so every conv and linear comes back
  under its state_dict key with its shape; batch norms the exporter folds into the conv before them
  (eval mode) leave no keys and give that conv a bias; every other key is the state_dict's, with the
  same values.

The input is 3x80x80 (these networks take any size; 80 halves to an odd 5x5 before the last
downsampling), so the non-slow part of the file runs in about half a minute on 2 cores. Every export and
import is made once per (network, opset) and shared by the tests.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import cnngraph  # noqa: E402
from test_backends import OPENCL_REASON  # noqa: E402
from zoo_torch import (MODELS, SqueezeExcitation, conv_norm_act, max_rel_err, randomized_state,  # noqa: E402
                       torch_export)

TOL = 1e-4
BATCH = 2
SIZE = 80
OPSETS = [17, 13]


# --- three more torchvision families, compactly, with torchvision's module names -----------------------

class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (ResNeXt when groups > 1): the stride on the 3x3 conv."""
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, groups: int, base_width: int):
        super().__init__()
        width = int(planes * base_width / 64) * groups
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNeXt(nn.Module):
    """resnext50_32x4d: torchvision's ResNet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4)."""

    def __init__(self, layers=(3, 4, 6, 3), groups: int = 32, width_per_group: int = 4, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(cin, planes, 2 if b == 0 and i > 1 else 1, groups, width_per_group))
                cin = planes * 4
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class BottleneckTransform(nn.Sequential):
    """RegNet's a (1x1), b (grouped 3x3, strided), se, c (1x1, no activation)."""

    def __init__(self, w_in: int, w_out: int, stride: int, group_width: int, se_ratio: float):
        groups = w_out // group_width
        super().__init__()
        self.a = conv_norm_act(w_in, w_out, 1, act=nn.ReLU)
        self.b = conv_norm_act(w_out, w_out, 3, stride, groups=groups, act=nn.ReLU)
        self.se = SqueezeExcitation(w_out, int(round(se_ratio * w_in)), nn.ReLU, nn.Sigmoid)
        self.c = conv_norm_act(w_out, w_out, 1)


class ResBottleneckBlock(nn.Module):
    def __init__(self, w_in: int, w_out: int, stride: int, group_width: int, se_ratio: float):
        super().__init__()
        self.proj = conv_norm_act(w_in, w_out, 1, stride) if w_in != w_out or stride != 1 else None
        self.f = BottleneckTransform(w_in, w_out, stride, group_width, se_ratio)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activation((x if self.proj is None else self.proj(x)) + self.f(x))


class RegNet(nn.Module):
    """regnet_y_400mf: stem, trunk_output.block{s}.block{s}-{i} (names with a hyphen), avgpool, fc."""

    def __init__(self, depths=(1, 3, 6, 6), widths=(48, 104, 208, 440), group_width: int = 8,
                 se_ratio: float = 0.25, num_classes: int = 1000):
        super().__init__()
        self.stem = conv_norm_act(3, 32, 3, 2, act=nn.ReLU)
        stages, w_in = [], 32
        for s, (depth, w_out) in enumerate(zip(depths, widths), start=1):
            stage = nn.Sequential()
            for i in range(depth):
                stage.add_module(f"block{s}-{i}", ResBottleneckBlock(w_in if i == 0 else w_out, w_out,
                                                                     2 if i == 0 else 1, group_width, se_ratio))
            stages.append((f"block{s}", stage))
            w_in = w_out
        self.trunk_output = nn.Sequential()
        for name, stage in stages:
            self.trunk_output.add_module(name, stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w_in, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.trunk_output(self.stem(x))), 1))


class MnasResidual(nn.Module):
    """MNASNet's _InvertedResidual: layers = expand 1x1, BN, ReLU, depthwise, BN, ReLU, project 1x1, BN."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expansion: int, momentum: float):
        super().__init__()
        mid = cin * expansion
        self.apply_residual = cin == cout and stride == 1
        self.layers = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid, momentum=momentum), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid, momentum=momentum),
            nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout, momentum=momentum))

    def forward(self, x):
        return self.layers(x) + x if self.apply_residual else self.layers(x)


MNASNET_STACKS = [(16, 24, 3, 2, 3, 3), (24, 40, 5, 2, 3, 3), (40, 80, 5, 2, 6, 3), (80, 96, 3, 1, 6, 2),
                  (96, 192, 5, 2, 6, 4), (192, 320, 3, 1, 6, 1)]  # cin, cout, kernel, stride, expansion, repeats


class MNASNet(nn.Module):
    """mnasnet1_0: layers.0..16 (stem, separable conv, six stacks, head conv), mean over H and W, classifier."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        m = 1 - 0.9997
        layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32, momentum=m), nn.ReLU(inplace=True),
                  nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32, momentum=m),
                  nn.ReLU(inplace=True), nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16, momentum=m)]
        for cin, cout, k, stride, exp, n in MNASNET_STACKS:
            layers.append(nn.Sequential(*[MnasResidual(cin if i == 0 else cout, cout, k, stride if i == 0 else 1,
                                                       exp, m) for i in range(n)]))
        layers += [nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280, momentum=m), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.layers(x).mean([2, 3]))


NETWORKS = {**MODELS, "resnext50_32x4d": ResNeXt, "regnet_y_400mf": RegNet, "mnasnet1_0": MNASNet}
NAMES = list(NETWORKS)


# --- each export and import once --------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def mirror(name: str) -> tuple[nn.Module, nn.Module, dict[str, np.ndarray]]:
    """The seeded network with its randomized state loaded (eval mode), a float64 copy, and the state."""
    torch.manual_seed(0)
    model = NETWORKS[name]()
    state = randomized_state(model, seed=1)  # sets the state in `model` and returns it
    return model, copy.deepcopy(model).double(), state


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(name, opset) -> the ONNX file of the network, written once per (name, opset)."""
    folder = tmp_path_factory.mktemp("zoo_onnx")

    @functools.lru_cache(maxsize=None)
    def export(name: str, opset: int) -> Path:
        x = np.zeros((1, 3, SIZE, SIZE), np.float32)
        return torch_export(mirror(name)[0], x, folder / f"{name}_opset{opset}.onnx", opset)

    return export


@pytest.fixture(scope="module")
def imported(exported):
    """imported(name, opset) -> (spec, weights) from cnngraph.from_onnx, once per (name, opset)
    (a failed import is not cached: each test that needs it reports the error)."""

    @functools.lru_cache(maxsize=None)
    def load(name: str, opset: int):
        return cnngraph.from_onnx(exported(name, opset))

    return load


def check_matches_torch(name: str, opset: int, imported, device: str):
    spec, weights = imported(name, opset)
    model, model64, _ = mirror(name)
    x = np.random.default_rng(2).standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32)
    got = cnngraph.compile(spec, batch_size=BATCH, weights=weights, device=device)(x)
    with torch.no_grad():
        want64 = model64(torch.from_numpy(x).double()).numpy()
        want32 = model(torch.from_numpy(x)).numpy()
    assert np.shape(got) == (BATCH, 1000)
    err64, err32 = max_rel_err(got, want64), max_rel_err(got, want32)
    assert err64 <= TOL, f"{name} opset {opset} on {device}: max |error| / max |float64 reference| = {err64:.2e}"
    assert err32 <= TOL, f"{name} opset {opset} on {device}: max |error| / max |float32 reference| = {err32:.2e}"


# --- the tests ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", OPSETS, ids=lambda o: f"opset{o}")
@pytest.mark.parametrize("name", NAMES)
def test_imports_and_matches_torch_on_cpu(name, opset, imported):
    check_matches_torch(name, opset, imported, "cpu")


@pytest.mark.skipif(OPENCL_REASON is not None, reason=str(OPENCL_REASON))
@pytest.mark.slow  # even ShuffleNetV2 takes ~45 s with a cold PoCL kernel cache on 2 cores (~2 s warm)
@pytest.mark.parametrize("opset", OPSETS, ids=lambda o: f"opset{o}")
@pytest.mark.parametrize("name", NAMES)
def test_imports_and_matches_torch_on_opencl(name, opset, imported):
    check_matches_torch(name, opset, imported, "opencl")


@pytest.mark.parametrize("opset", OPSETS, ids=lambda o: f"opset{o}")
@pytest.mark.parametrize("name", NAMES)
def test_weight_keys_are_the_state_dict_keys(name, opset, imported):
    """Every conv and linear under its module's key and shape; each folded batch norm leaves no keys
    and adds a bias to one bias-less conv; every other key is the state_dict's, with its values."""
    _, weights = imported(name, opset)
    model, _, state = mirror(name)
    modules = dict(model.named_modules())
    convs = {n: m for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))}
    norms = {n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)}

    for layer, module in convs.items():
        key = f"{layer}.weight"
        assert key in weights, f"{name}: no weight {key!r} (imported layer names are not the module names)"
        want = tuple(module.weight.shape)
        got = weights[key].shape
        assert got[:len(want)] == want and all(d == 1 for d in got[len(want):]), (key, got, want)

    folded_biases = set()
    for key, value in weights.items():
        if key in state:
            owner = key.rsplit(".", 1)[0]
            if not (owner in convs and convs[owner].bias is None):
                # not touched by batch-norm folding: the very values PyTorch holds
                np.testing.assert_array_equal(value.reshape(state[key].shape), state[key], err_msg=key)
            continue
        owner, leaf = key.rsplit(".", 1) if "." in key else (key, "")
        if not (leaf == "bias" and owner in convs and convs[owner].bias is None):
            same = [k for k, v in state.items() if v.size == value.size and np.array_equal(v.ravel(), value.ravel())]
            pytest.fail(f"{name}: imported key {key!r} is neither a state_dict key nor the bias of a folded conv"
                        + (f" (it holds state_dict's {same[0]!r})" if same else ""))
        folded_biases.add(owner)

    kept, dropped = set(), set()
    for norm in norms:
        keys = {f"{norm}.{leaf}" for leaf in ("weight", "bias", "running_mean", "running_var")}
        present = keys & set(weights)
        assert present in (set(), keys), f"{name}: batch norm {norm!r} partly imported: {sorted(present)}"
        (kept if present else dropped).add(norm)
    assert len(dropped) == len(folded_biases), \
        f"{name}: {len(dropped)} batch norms folded away but {len(folded_biases)} convs gained a bias"
    other = {k for k in state if k.rsplit(".", 1)[0] not in dropped}
    assert sorted(other - set(weights)) == [], f"{name}: state_dict keys the import lacks"
