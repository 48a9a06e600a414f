"""Write the torchvision zoo examples: MobileNetV3-Large, EfficientNet-B0, ShuffleNetV2 x1.0,
DenseNet-121, ConvNeXt-Tiny and ResNet-50 as cnngraph specs.

Every layer that holds weights is named after its torchvision module path, so a torchvision
`state_dict()` loads as it is (`cnngraph.weights_from_torch(model.state_dict())`): the keys
`<layer>.weight`, `.bias`, `.running_mean`, `.running_var` (and ConvNeXt's `features.1.0.layer_scale`)
match one to one. Layers without weights are named after the module they belong to, or after what
they do inside it (`features.1.0.add`, `stage2.1.shuffle`).

Run from anywhere: `python examples/generate_zoo.py` rewrites the six files next to this script.
Needs nothing but the standard library.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
INPUT = {"name": "image", "shape": [3, 224, 224]}
CLASSES = 1000
# torchvision's ImageNet transform of the weights these mirror (resize, crop, interpolation differ per model)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def imagenet_preprocess(resize: int = 256, interpolation: str = "bilinear") -> dict:
    return {"resize": resize, "center_crop": 224, "interpolation": interpolation, "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD}


class Net:
    """Collects layers in order. A layer reads the previous one unless `x` names another."""

    def __init__(self, name: str, preprocess: dict | None = None):
        self.name = name
        self.layers: list[dict] = []
        self.prev = INPUT["name"]
        self.preprocess = preprocess or imagenet_preprocess()

    def add(self, op: str, name: str, x: str | list[str] | None = None, **params) -> str:
        layer = {"op": op, "name": name, **params}
        inputs = [x] if isinstance(x, str) else x
        if inputs is not None and inputs != [self.prev]:
            layer["inputs"] = inputs
        self.layers.append(layer)
        self.prev = name
        return name

    def write(self) -> Path:
        head = {"$schema": "../schemas/network.schema.json", "format_version": 1, "name": self.name,
                "inputs": [INPUT], "preprocess": self.preprocess, "labels": "imagenet_classes.txt"}
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
        body = ",\n".join(f"    {json.dumps(layer)}" for layer in self.layers)
        text = "{\n" + "\n".join(lines) + '\n  "layers": [\n' + body + "\n  ],\n"
        text += f'  "outputs": {json.dumps([self.prev])}\n}}\n'
        path = HERE / f"{self.name}.json"
        path.write_text(text)
        return path


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: round to a multiple of `divisor`, never down by more than 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_norm_act(net: Net, x: str, prefix: str, out: int, k: int, stride: int = 1, groups: int = 1,
                  act: str | None = None, eps: float = 1e-5) -> str:
    """torchvision's Conv2dNormActivation: `prefix.0` conv (no bias), `prefix.1` batch norm, `prefix.2` act."""
    conv = {"out_channels": out, "kernel_size": k}  # fields at their default are left out
    if stride != 1:
        conv["stride"] = stride
    if k > 1:
        conv["padding"] = (k - 1) // 2
    if groups != 1:
        conv["groups"] = groups
    net.add("conv2d", f"{prefix}.0", x, **conv, bias=False)
    y = net.add("batch_norm2d", f"{prefix}.1", eps=eps)
    return net.add(act, f"{prefix}.2") if act else y


def squeeze_excitation(net: Net, x: str, prefix: str, channels: int, squeeze: int, act: str, gate: str) -> str:
    """torchvision.ops.SqueezeExcitation: x * gate(fc2(act(fc1(avgpool(x)))))."""
    net.add("global_avg_pool2d", f"{prefix}.avgpool", x)
    net.add("conv2d", f"{prefix}.fc1", out_channels=squeeze, kernel_size=1, activation=act)
    net.add("conv2d", f"{prefix}.fc2", out_channels=channels, kernel_size=1)
    g = net.add(gate, f"{prefix}.scale_activation")                # (C, 1, 1)
    return net.add("mul", f"{prefix}.mul", [x, g])


# --- MobileNetV3-Large (torchvision/models/mobilenetv3.py) ---------------------------------------

# input channels, kernel, expanded channels, output channels, squeeze-excitation, activation, stride
MOBILENET_V3_LARGE = [
    (16, 3, 16, 16, False, "relu", 1), (16, 3, 64, 24, False, "relu", 2), (24, 3, 72, 24, False, "relu", 1),
    (24, 5, 72, 40, True, "relu", 2), (40, 5, 120, 40, True, "relu", 1), (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hardswish", 2), (80, 3, 200, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1), (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 480, 112, True, "hardswish", 1), (112, 3, 672, 112, True, "hardswish", 1),
    (112, 5, 672, 160, True, "hardswish", 2), (160, 5, 960, 160, True, "hardswish", 1),
    (160, 5, 960, 160, True, "hardswish", 1),
]


def mobilenet_v3_large() -> Net:
    net, eps = Net("mobilenet_v3_large"), 1e-3  # BatchNorm2d(eps=0.001, momentum=0.01) throughout
    x = conv_norm_act(net, "image", "features.0", 16, 3, stride=2, act="hardswish", eps=eps)
    for i, (cin, k, exp, cout, se, act, stride) in enumerate(MOBILENET_V3_LARGE, start=1):
        block, j, y = f"features.{i}.block", 0, x
        if exp != cin:  # expand
            y = conv_norm_act(net, y, f"{block}.0", exp, 1, act=act, eps=eps)
            j += 1
        y = conv_norm_act(net, y, f"{block}.{j}", exp, k, stride=stride, groups=exp, act=act, eps=eps)  # depthwise
        if se:
            j += 1
            y = squeeze_excitation(net, y, f"{block}.{j}", exp, make_divisible(exp // 4), "relu", "hardsigmoid")
        y = conv_norm_act(net, y, f"{block}.{j + 1}", cout, 1, eps=eps)  # project, no activation
        x = net.add("add", f"features.{i}.add", [y, x]) if stride == 1 and cin == cout else y
    conv_norm_act(net, x, "features.16", 960, 1, act="hardswish", eps=eps)
    net.add("global_avg_pool2d", "avgpool")
    net.add("flatten", "flatten")
    net.add("linear", "classifier.0", out_features=1280)
    net.add("hardswish", "classifier.1")
    net.add("dropout", "classifier.2", p=0.2)
    net.add("linear", "classifier.3", out_features=CLASSES)
    return net


# --- EfficientNet-B0 (torchvision/models/efficientnet.py) ----------------------------------------

# expand ratio, kernel, stride, input channels, output channels, blocks: one stage each
EFFICIENTNET_B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                   (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


def efficientnet_b0() -> Net:
    net = Net("efficientnet_b0", imagenet_preprocess(256, "bicubic"))  # plain BatchNorm2d (eps 1e-5) up to B4; only B5-B7 use eps 1e-3
    x = conv_norm_act(net, "image", "features.0", 32, 3, stride=2, act="silu")
    for s, (ratio, k, stride, cin, cout, blocks) in enumerate(EFFICIENTNET_B0, start=1):
        for b in range(blocks):
            if b > 0:
                cin, stride = cout, 1
            block, exp, j, y = f"features.{s}.{b}.block", make_divisible(cin * ratio), 0, x
            if exp != cin:  # expand
                y = conv_norm_act(net, y, f"{block}.0", exp, 1, act="silu")
                j += 1
            y = conv_norm_act(net, y, f"{block}.{j}", exp, k, stride=stride, groups=exp, act="silu")  # depthwise
            y = squeeze_excitation(net, y, f"{block}.{j + 1}", exp, max(1, cin // 4), "silu", "sigmoid")
            y = conv_norm_act(net, y, f"{block}.{j + 2}", cout, 1)  # project, no activation
            # stochastic depth (features.s.b.stochastic_depth) is the identity at inference
            x = net.add("add", f"features.{s}.{b}.add", [y, x]) if stride == 1 and cin == cout else y
    conv_norm_act(net, x, "features.8", 1280, 1, act="silu")
    net.add("global_avg_pool2d", "avgpool")
    net.add("flatten", "flatten")
    net.add("dropout", "classifier.0", p=0.2)
    net.add("linear", "classifier.1", out_features=CLASSES)
    return net


# --- ShuffleNetV2 x1.0 (torchvision/models/shufflenetv2.py) --------------------------------------

def shufflenet_v2_x1_0() -> Net:
    net = Net("shufflenet_v2")  # the x1.0 width
    net.add("conv2d", "conv1.0", out_channels=24, kernel_size=3, stride=2, padding=1, bias=False)
    net.add("batch_norm2d", "conv1.1")
    net.add("relu", "conv1.2")
    x, cin = net.add("max_pool2d", "maxpool", kernel_size=3, stride=2, padding=1), 24
    for stage, repeats, cout in [("stage2", 4, 116), ("stage3", 8, 232), ("stage4", 4, 464)]:
        half = cout // 2
        for u in range(repeats):
            unit, stride = f"{stage}.{u}", 2 if u == 0 else 1
            if stride == 2:  # both branches read the whole input
                net.add("conv2d", f"{unit}.branch1.0", x, out_channels=cin, kernel_size=3, stride=2, padding=1,
                        groups=cin, bias=False)
                net.add("batch_norm2d", f"{unit}.branch1.1")
                net.add("conv2d", f"{unit}.branch1.2", out_channels=half, kernel_size=1, bias=False)
                net.add("batch_norm2d", f"{unit}.branch1.3")
                left, right = net.add("relu", f"{unit}.branch1.4"), x
            else:  # x.chunk(2, dim=1): the first half passes through, branch2 takes the second
                left = net.add("slice", f"{unit}.chunk0", x, start=0, end=half)
                right = net.add("slice", f"{unit}.chunk1", x, start=half, end=None)
            net.add("conv2d", f"{unit}.branch2.0", right, out_channels=half, kernel_size=1, bias=False)
            net.add("batch_norm2d", f"{unit}.branch2.1")
            net.add("relu", f"{unit}.branch2.2")
            net.add("conv2d", f"{unit}.branch2.3", out_channels=half, kernel_size=3, stride=stride, padding=1,
                    groups=half, bias=False)
            net.add("batch_norm2d", f"{unit}.branch2.4")
            net.add("conv2d", f"{unit}.branch2.5", out_channels=half, kernel_size=1, bias=False)
            net.add("batch_norm2d", f"{unit}.branch2.6")
            net.add("relu", f"{unit}.branch2.7")
            net.add("concat", f"{unit}.cat", [left, f"{unit}.branch2.7"])
            x = net.add("channel_shuffle", f"{unit}.shuffle", groups=2)
        cin = cout
    net.add("conv2d", "conv5.0", out_channels=1024, kernel_size=1, bias=False)
    net.add("batch_norm2d", "conv5.1")
    net.add("relu", "conv5.2")
    net.add("mean", "globalpool", dim=[2, 3])  # x.mean([2, 3]): (1024,)
    net.add("linear", "fc", out_features=CLASSES)
    return net


# --- DenseNet-121 (torchvision/models/densenet.py) -----------------------------------------------

def densenet121(growth: int = 32, bn_size: int = 4, blocks=(6, 12, 24, 16)) -> Net:
    net = Net("densenet121")
    net.add("conv2d", "features.conv0", out_channels=64, kernel_size=7, stride=2, padding=3, bias=False)
    net.add("batch_norm2d", "features.norm0")
    net.add("relu", "features.relu0")
    x, channels = net.add("max_pool2d", "features.pool0", kernel_size=3, stride=2, padding=1), 64
    for b, layers in enumerate(blocks, start=1):
        for i in range(1, layers + 1):
            p = f"features.denseblock{b}.denselayer{i}"  # pre-activation bottleneck: bn-relu-conv1x1-bn-relu-conv3x3
            net.add("batch_norm2d", f"{p}.norm1", x)
            net.add("relu", f"{p}.relu1")
            net.add("conv2d", f"{p}.conv1", out_channels=bn_size * growth, kernel_size=1, bias=False)
            net.add("batch_norm2d", f"{p}.norm2")
            net.add("relu", f"{p}.relu2")
            new = net.add("conv2d", f"{p}.conv2", out_channels=growth, kernel_size=3, padding=1, bias=False)
            x = net.add("concat", f"{p}.cat", [x, new])  # every layer sees all earlier features
            channels += growth
        if b < len(blocks):
            t = f"features.transition{b}"
            net.add("batch_norm2d", f"{t}.norm")
            net.add("relu", f"{t}.relu")
            net.add("conv2d", f"{t}.conv", out_channels=channels // 2, kernel_size=1, bias=False)
            x, channels = net.add("avg_pool2d", f"{t}.pool", kernel_size=2, stride=2), channels // 2
    net.add("batch_norm2d", "features.norm5")
    net.add("relu", "relu")  # F.relu in DenseNet.forward
    net.add("global_avg_pool2d", "avgpool")
    net.add("flatten", "flatten")
    net.add("linear", "classifier", out_features=CLASSES)
    return net


# --- ConvNeXt-Tiny (torchvision/models/convnext.py) ----------------------------------------------

def convnext_tiny(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3), eps: float = 1e-6) -> Net:
    net = Net("convnext_tiny", imagenet_preprocess(236))
    net.add("conv2d", "features.0.0", out_channels=dims[0], kernel_size=4, stride=4)  # patchify stem
    x = net.add("layer_norm", "features.0.1", eps=eps)  # LayerNorm2d: over channels at each pixel
    for s, (dim, depth) in enumerate(zip(dims, depths)):
        stage = 2 * s + 1  # features.1, 3, 5, 7 hold the blocks; 2, 4, 6 downsample
        if s > 0:
            net.add("layer_norm", f"features.{stage - 1}.0", eps=eps)
            x = net.add("conv2d", f"features.{stage - 1}.1", out_channels=dim, kernel_size=2, stride=2)
        for b in range(depth):
            p = f"features.{stage}.{b}"
            net.add("conv2d", f"{p}.block.0", x, out_channels=dim, kernel_size=7, padding=3, groups=dim)
            # block.1 permutes to channels-last; LayerNorm and the two Linears act on channels per pixel,
            # so they are a layer_norm over channels and two 1x1 convs here (block.4 is the GELU)
            net.add("layer_norm", f"{p}.block.2", eps=eps)
            net.add("conv2d", f"{p}.block.3", out_channels=4 * dim, kernel_size=1, activation="gelu")
            net.add("conv2d", f"{p}.block.5", out_channels=dim, kernel_size=1)
            y = net.add("scale", f"{p}.layer_scale")
            # stochastic depth is the identity at inference
            x = net.add("add", f"{p}.add", [y, x])
    net.add("global_avg_pool2d", "avgpool")
    net.add("layer_norm", "classifier.0", eps=eps)  # LayerNorm2d on (768, 1, 1)
    net.add("flatten", "classifier.1")
    net.add("linear", "classifier.2", out_features=CLASSES)
    return net


# --- ResNet-50 (torchvision/models/resnet.py: Bottleneck, the stride on the 3x3 conv, "v1.5") ---------

def resnet50(blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), expansion: int = 4) -> Net:
    net = Net("resnet50")
    net.add("conv2d", "conv1", out_channels=64, kernel_size=7, stride=2, padding=3, bias=False)
    net.add("batch_norm2d", "bn1")
    net.add("relu", "relu")
    x = net.add("max_pool2d", "maxpool", kernel_size=3, stride=2, padding=1)
    for s, (count, width) in enumerate(zip(blocks, widths), start=1):
        for b in range(count):
            block, stride, cout = f"layer{s}.{b}", 2 if b == 0 and s > 1 else 1, width * expansion
            net.add("conv2d", f"{block}.conv1", x, out_channels=width, kernel_size=1, bias=False)
            net.add("batch_norm2d", f"{block}.bn1")
            net.add("relu", f"{block}.relu1")
            net.add("conv2d", f"{block}.conv2", out_channels=width, kernel_size=3, stride=stride, padding=1, bias=False)
            net.add("batch_norm2d", f"{block}.bn2")
            net.add("relu", f"{block}.relu2")
            net.add("conv2d", f"{block}.conv3", out_channels=cout, kernel_size=1, bias=False)
            y = net.add("batch_norm2d", f"{block}.bn3")
            if b == 0:  # the shortcut changes width (and, after the first stage, resolution)
                conv = {"stride": stride} if stride != 1 else {}
                net.add("conv2d", f"{block}.downsample.0", x, out_channels=cout, kernel_size=1, **conv, bias=False)
                x = net.add("batch_norm2d", f"{block}.downsample.1")
            net.add("add", f"{block}.add", [y, x])
            x = net.add("relu", f"{block}.relu3")
    net.add("global_avg_pool2d", "avgpool")
    net.add("flatten", "flatten")
    net.add("linear", "fc", out_features=CLASSES)
    return net


NETWORKS = {"mobilenet_v3_large": mobilenet_v3_large, "efficientnet_b0": efficientnet_b0,
            "shufflenet_v2": shufflenet_v2_x1_0, "densenet121": densenet121, "convnext_tiny": convnext_tiny,
            "resnet50": resnet50}

if __name__ == "__main__":
    for make in NETWORKS.values():
        net = make()
        print(f"{net.write().relative_to(HERE.parent)}: {len(net.layers)} layers")
