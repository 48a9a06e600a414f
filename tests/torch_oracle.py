"""PyTorch reference ("oracle") for cnngraph specs, used by the tests.

Owns an independent reading of the spec format (version 1, DESIGN.md):
it interprets a parsed spec dict layer by layer with `torch.nn.functional`
in float64, and derives the weight keys and shapes a spec implies, for the
ops it knows (`KNOWN_OPS`) without importing cnngraph, so agreement with
cnngraph is evidence, not tautology. An op it does not know is computed by
the PyTorch reference the op declares in cnngraph's registry
(`Layer.torch_reference`), so a new op reaches every test that uses the
oracle; tests/test_registry.py checks those references against this file's
own reading wherever both exist.

Weights use PyTorch state_dict keys: `<layer>.weight`, `<layer>.bias`,
`<layer>.running_mean`, `<layer>.running_var`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ACTIVATIONS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": lambda x, negative_slope=0.01: F.leaky_relu(x, negative_slope),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "silu": F.silu,
    "hardswish": F.hardswish,
}
_LAYER_KEYS = ("op", "name", "inputs")


def _t(v):
    """JSON lists become tuples (torch wants tuples for pairs)."""
    return tuple(v) if isinstance(v, list) else v


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _activate(x, act):
    """Apply an activation given as None, a name, or {"op": name, **params}."""
    if act is None:
        return x
    if isinstance(act, str):
        act = {"op": act}
    params = {k: v for k, v in act.items() if k not in _LAYER_KEYS}
    return ACTIVATIONS[act["op"]](x, **params)


def resolved_layers(spec: dict):
    """Yield (name, input names, layer) with the spec's defaults applied:
    name `<op>_<index>` (index in the layers list, from 0), inputs = the
    previous layer, the first layer reading the first network input."""
    prev = spec["inputs"][0]["name"]
    for i, layer in enumerate(spec["layers"]):
        name = layer.get("name", f"{layer['op']}_{i}")
        yield name, list(layer.get("inputs", [prev])), layer
        prev = name


def output_names(spec: dict) -> list[str]:
    return list(spec.get("outputs") or [list(resolved_layers(spec))[-1][0]])


def _forward(spec: dict, env: dict, param) -> dict:
    """Run every layer; `param(key, shape)` supplies each weight tensor."""
    env = dict(env)
    for name, srcs, layer in resolved_layers(spec):
        xs = [env[s] for s in srcs]
        x, op = xs[0], layer["op"]
        get = layer.get
        if op == "conv2d":
            groups, out = get("groups", 1), layer["out_channels"]
            w = param(f"{name}.weight", (out, x.shape[1] // groups, *_pair(layer["kernel_size"])))
            b = param(f"{name}.bias", (out,)) if get("bias", True) else None
            pad = get("padding", 0)
            pad = 0 if pad == "valid" else _t(pad)
            if isinstance(pad, tuple) and len(pad) == 4:  # [top, left, bottom, right]: F.pad first
                x, pad = F.pad(x, (pad[1], pad[3], pad[0], pad[2])), 0
            y = F.conv2d(x, w, b, _t(get("stride", 1)), pad, _t(get("dilation", 1)), groups)
            y = _activate(y, get("activation"))
        elif op == "linear":
            if x.dim() != 2:
                raise ValueError(f"{name}: linear needs a 2-D input, got {tuple(x.shape)}")
            out = layer["out_features"]
            w = param(f"{name}.weight", (out, x.shape[1]))
            b = param(f"{name}.bias", (out,)) if get("bias", True) else None
            y = _activate(F.linear(x, w, b), get("activation"))
        elif op == "batch_norm2d":
            c = (x.shape[1],)
            keys = ("running_mean", "running_var", "weight", "bias")
            stats = [param(f"{name}.{k}", c) for k in keys]
            y = F.batch_norm(x, *stats, training=False, eps=get("eps", 1e-5))
        elif op in ACTIVATIONS:
            y = _activate(x, layer)
        elif op in ("max_pool2d", "avg_pool2d"):
            args = (x, _t(layer["kernel_size"]), _t(get("stride")), _t(get("padding", 0)))
            if op == "max_pool2d":
                y = F.max_pool2d(*args, ceil_mode=get("ceil_mode", False))
            else:
                y = F.avg_pool2d(*args, ceil_mode=get("ceil_mode", False),
                                 count_include_pad=get("count_include_pad", True))
        elif op == "global_avg_pool2d":
            y = F.adaptive_avg_pool2d(x, 1)
        elif op == "flatten":
            y = torch.flatten(x, 1)
        elif op == "dropout":
            y = x
        elif op == "add":
            if len({tuple(map(int, t.shape)) for t in xs}) != 1:
                shapes = [tuple(map(int, t.shape)) for t in xs]
                raise ValueError(f"{name}: add needs inputs of one shape, got {shapes}")
            y = xs[0]
            for other in xs[1:]:
                y = y + other
        elif op == "concat":
            y = torch.cat(xs, dim=1)
        elif op == "softmax":
            y = F.softmax(x, dim=get("axis", 1))
        elif op == "upsample2d":
            mode = get("mode", "nearest")
            size = _t(layer["size"]) if layer.get("size") else None
            scale = None if size else _t(layer["scale_factor"])
            y = F.interpolate(x, size=size, scale_factor=scale, mode=mode,
                              align_corners=get("align_corners", False) if mode == "bilinear" else None)
        else:
            y = _registry_reference(name, srcs, layer, xs, param)
        env[name] = y
    return env


KNOWN_OPS = {"conv2d", "linear", "batch_norm2d", *ACTIVATIONS, "max_pool2d", "avg_pool2d", "global_avg_pool2d",
             "flatten", "dropout", "add", "concat", "softmax", "upsample2d"}


def _registry_reference(name, srcs, layer, xs, param):
    """An op this file does not know, computed by the reference its cnngraph op module declares."""
    from cnngraph.ops import OPS
    if layer["op"] not in OPS:
        raise ValueError(f"{name}: unknown op {layer['op']!r}")
    model = OPS[layer["op"]].model_validate({**layer, "name": name, "inputs": srcs})
    shapes = model.weight_shapes([tuple(int(d) for d in x.shape[1:]) for x in xs])
    # a weight without a suffix is keyed by the layer's name (a module's own parameter, as a layer scale)
    return model.torch_reference(xs, {k: param(f"{name}.{k}" if k else name, shape) for k, shape in shapes.items()})


def weight_shapes(spec: dict) -> dict[str, tuple]:
    """Every weight key the spec needs, with its shape, in layer order."""
    shapes = {}

    def param(key, shape):
        shapes[key] = tuple(int(s) for s in shape)
        return torch.zeros(shape, dtype=torch.float64, device="meta")

    env = {i["name"]: torch.zeros((1, *i["shape"]), dtype=torch.float64, device="meta")
           for i in spec["inputs"]}
    _forward(spec, env, param)
    return shapes


def random_weights(spec: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights for every key (running_var kept positive)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in weight_shapes(spec).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        w = rng.standard_normal(shape) * (np.sqrt(2.0 / fan_in) if len(shape) > 1 else 0.1)
        if key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            w = 1.0 + np.abs(w)
        out[key] = w.astype(np.float32)
    return out


def run_spec(spec: dict, weights: dict, inputs) -> dict[str, np.ndarray]:
    """Outputs of the network, {name: float64 array}, for batched inputs:
    a dict {input name: array} or one array for the first input."""
    if not isinstance(inputs, dict):
        inputs = {spec["inputs"][0]["name"]: inputs}

    def param(key, shape):
        if key not in weights:
            raise KeyError(f"missing weight {key!r}")
        w = torch.from_numpy(np.asarray(weights[key], dtype=np.float64))
        if tuple(w.shape) != tuple(shape):
            raise ValueError(f"weight {key!r} has shape {tuple(w.shape)}, expected {tuple(shape)}")
        return w

    env = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in inputs.items()}
    with torch.no_grad():
        env = _forward(spec, env, param)
    return {n: env[n].numpy() for n in output_names(spec)}


class TorchNet(torch.nn.Module):
    """The spec as a float32 (by default) torch module, for benchmarks and ONNX export: the same
    interpreter as `run_spec`, with the weights held as tensors of `dtype`."""

    def __init__(self, spec: dict, weights: dict, dtype=torch.float32):
        super().__init__()
        self.spec = spec
        self.tensors = {k: torch.from_numpy(np.asarray(v)).to(dtype) for k, v in weights.items()}

    def forward(self, *xs):
        env = dict(zip((i["name"] for i in self.spec["inputs"]), xs))
        env = _forward(self.spec, env, lambda key, shape: self.tensors[key])
        outs = [env[n] for n in output_names(self.spec)]
        return outs[0] if len(outs) == 1 else tuple(outs)
