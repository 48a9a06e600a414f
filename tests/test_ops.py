"""Every op, through the public API, against PyTorch in float64.

Each case is a small spec (one or a few layers) compiled with `optimize=False` and run by the NumPy
backend on fresh random normal float32 data (never zeros). The reference is `tests/torch_oracle.py`
(an independent float64 `torch.nn.functional` interpreter of the spec) and, for conv2d and the
pools, a direct `torch.nn.functional` call on float64 tensors as well. Every case also checks that
shape inference (`model.graph.nodes[name]["shape"]`) equals the shape PyTorch produced, and that the
weight keys/shapes cnngraph expects are the ones PyTorch's state_dict convention implies.

Tolerance (DESIGN.md): relative error ||out - ref|| / ||ref|| < 1e-5 per op.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnngraph
from torch_oracle import output_names, random_weights, run_spec, weight_shapes

TOL = 1e-5

# PyTorch warns that it pads a copy for "same" with even kernels; that is what is being tested
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

ACTIVATION_FORMS = [
    "relu", {"op": "relu"}, "relu6", "leaky_relu", {"op": "leaky_relu", "negative_slope": 0.2},
    {"op": "leaky_relu", "negative_slope": -1.5}, "sigmoid", "tanh", "gelu",
    {"op": "gelu", "approximate": "none"}, {"op": "gelu", "approximate": "tanh"}, "silu", "hardswish",
]


# --- helpers --------------------------------------------------------------------------------------

def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    denom = np.linalg.norm(ref)
    assert denom > 0, "degenerate reference (all zeros): the case tests nothing"
    return float(np.linalg.norm(np.asarray(out, np.float64) - ref) / denom)


def spec_of(layers, inputs=((3, 11, 13),), outputs=None) -> dict:
    """A spec dict; `inputs` are per-sample shapes named x (one input) or x0, x1, ... (several)."""
    names = ["x"] if len(inputs) == 1 else [f"x{i}" for i in range(len(inputs))]
    spec = {"format_version": 1, "name": "case",
            "inputs": [{"name": n, "shape": list(s)} for n, s in zip(names, inputs)],
            "layers": [dict(layer) for layer in layers]}
    if outputs is not None:
        spec["outputs"] = list(outputs)
    return spec


def random_inputs(spec: dict, batch: int, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i["name"]: (rng.standard_normal((batch, *i["shape"])) * scale).astype(np.float32)
            for i in spec["inputs"]}


def check(spec: dict, batch: int = 2, *, weights=None, seed: int = 0, scale: float = 1.0, tol: float = TOL):
    """Compile (unoptimized), run on fresh random data, compare every output with the oracle.
    Returns (model, inputs, outputs by name, oracle outputs by name)."""
    if weights is None:
        weights = random_weights(spec, seed)
    assert {k: tuple(v.shape) for k, v in weights.items()} == weight_shapes(spec)
    model = cnngraph.compile(spec, batch_size=batch, weights=weights, optimize=False)
    # cnngraph expects exactly the state_dict keys and shapes the oracle derives
    assert {k: tuple(v.shape) for k, v in model.weights.items()} == weight_shapes(spec)

    names = output_names(spec)

    def run(xs):
        saved = {k: v.copy() for k, v in xs.items()}
        out = model(xs if len(xs) > 1 else next(iter(xs.values())))
        for k in xs:  # the model must not write into its inputs
            np.testing.assert_array_equal(xs[k], saved[k])
        out = {names[0]: out} if len(names) == 1 else out
        assert set(out) == set(names)
        return saved, out, {k: v.copy() for k, v in out.items()}

    # two calls on different data: the second must not disturb the first's results (no output may
    # alias a buffer the backend reuses) and each must match its own reference
    xs, out, first = run(random_inputs(spec, batch, seed + 1000, scale))
    xs2, out2, _ = run(random_inputs(spec, batch, seed + 2000, scale))
    for (inp, got), kept in ((xs, out), first), ((xs2, out2), out2):
        ref = run_spec(spec, weights, inp)
        for name in names:
            np.testing.assert_array_equal(got[name], kept[name], err_msg=f"{name} changed by a later call")
            assert model.graph.nodes[name]["shape"] == ref[name].shape, f"shape inference of {name}"
            assert got[name].shape == ref[name].shape, name
            assert got[name].dtype == np.float32, name
            assert np.isfinite(got[name]).all(), name
            err = rel_err(got[name], ref[name])
            assert err < tol, f"{name}: relative error {err:.3g}"
    return model, xs, out, run_spec(spec, weights, xs)


def t64(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, np.float64))


def tup(v):
    return tuple(v) if isinstance(v, list) else v


def pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def torch_activation(x: torch.Tensor, activation) -> torch.Tensor:
    """An activation in either spec form, applied with torch.nn.functional."""
    act = {"op": activation} if isinstance(activation, str) else activation
    params = {k: v for k, v in act.items() if k != "op"}
    fn = {"relu": F.relu, "relu6": F.relu6, "leaky_relu": F.leaky_relu, "sigmoid": torch.sigmoid,
          "tanh": torch.tanh, "gelu": F.gelu, "silu": F.silu, "hardswish": F.hardswish}[act["op"]]
    return fn(x, **params)


def ids(value) -> str:
    return str(value).replace(" ", "").replace("'", "")


# --- conv2d ---------------------------------------------------------------------------------------

def conv_output_ok(size, kernel, stride, padding, dilation) -> bool:
    """Whether PyTorch accepts the geometry (positive output size in both dimensions)."""
    if padding == "same":
        return True
    pads = (0, 0) if padding == "valid" else pair(padding)
    return all((s + 2 * p - d * (k - 1) - 1) // st + 1 >= 1
               for s, k, st, p, d in zip(size, pair(kernel), pair(stride), pads, pair(dilation)))


def conv_cases():
    cases = []
    kernels = [1, 2, 3, 4, 5, 6, 7, [3, 5], [1, 7], [7, 1], [2, 4], [5, 2]]
    strides = [1, 2, 3, [1, 2], [3, 1]]
    sizes = [(11, 13), (9, 9), (12, 10), (13, 7)]

    def add(**kw):
        size = kw.pop("size")
        if kw.get("padding") == "same" and pair(kw.get("stride", 1)) != (1, 1):
            return
        if conv_output_ok(size[-2:], kw["kernel_size"], kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1)):
            cases.append((size, kw))

    # kernel x stride x padding form (int, pair, "same", "valid")
    for i, (k, s) in enumerate(itertools.product(kernels, strides)):
        kh, kw = pair(k)
        for padding in (0, kh // 2 if kh == kw else [kh // 2, kw // 2], [1, 2], "valid", "same"):
            add(size=sizes[i % len(sizes)], kernel_size=k, stride=s, padding=padding)
    # dilation (incl. "same" with even and rectangular kernels)
    for i, (k, d) in enumerate(itertools.product([2, 3, 4, [3, 5], [2, 3]], [2, 3, [1, 2], [3, 1]])):
        for padding, s in ((0, 1), (1, 2), ([2, 1], [1, 2]), ("same", 1), ("valid", 3)):
            add(size=(15, 17) if i % 2 else (14, 11), kernel_size=k, dilation=d, padding=padding, stride=s)
    # groups: 1, 2, depthwise (groups == in == out), depthwise with multiplier, bias on/off
    for i, ((cin, cout, g), k, s, d, bias) in enumerate(itertools.product(
            [(4, 6, 1), (4, 6, 2), (6, 4, 2), (6, 6, 6), (3, 6, 3), (8, 8, 4)],
            [1, 3, [3, 5]], [1, 2], [1, 2], [True, False])):
        add(size=(cin, *sizes[i % len(sizes)]), kernel_size=k, stride=s, dilation=d, groups=g,
            out_channels=cout, bias=bias, padding="same" if (s == 1 and i % 3 == 0) else (i % 2))
    # bias off with assorted geometry
    for k, s, p in [(3, 1, 1), ([3, 5], 2, [1, 2]), (1, 1, 0), (7, 3, 3), (4, 1, "same")]:
        add(size=(11, 13), kernel_size=k, stride=s, padding=p, bias=False)

    out = []
    for i, (size, kw) in enumerate(cases):
        if len(size) == 2:
            size = (3, *size)
        kw.setdefault("out_channels", 5)
        out.append(pytest.param(size, kw, 2 + i % 2, id=f"{i}-" + ids(dict(size=size, **kw))))
    return out


def direct_conv(layer: dict, w: dict, x: np.ndarray) -> torch.Tensor:
    """F.conv2d on float64 tensors, straight from the layer's fields (no oracle)."""
    name = layer["name"]
    pad = layer.get("padding", 0)
    pad = tup(pad)
    bias = t64(w[f"{name}.bias"]) if layer.get("bias", True) else None
    return F.conv2d(t64(x), t64(w[f"{name}.weight"]), bias, tup(layer.get("stride", 1)), pad,
                    tup(layer.get("dilation", 1)), layer.get("groups", 1))


@pytest.mark.parametrize("in_shape, fields, batch", conv_cases())
def test_conv2d(in_shape, fields, batch):
    layer = {"op": "conv2d", "name": "conv", **fields}
    spec = spec_of([layer], inputs=[in_shape])
    model, xs, out, ref = check(spec, batch)
    # the same against a direct F.conv2d call
    direct = direct_conv(layer, model.weights, xs["x"]).numpy()
    assert direct.shape == model.graph.nodes["conv"]["shape"]
    assert rel_err(out["conv"], direct) < TOL


@pytest.mark.parametrize("activation", ACTIVATION_FORMS, ids=ids)
@pytest.mark.parametrize("geometry", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=[1, 7], stride=[1, 2], bias=False),
    dict(kernel_size=3, groups=6, out_channels=6, padding="same", dilation=2),  # depthwise
    dict(kernel_size=1),
], ids=ids)
def test_conv2d_activation_field(activation, geometry):
    fields = {"out_channels": 4, **geometry}
    layer = {"op": "conv2d", "name": "conv", "activation": activation, **fields}
    spec = spec_of([layer], inputs=[(6, 9, 11)])
    # scale 3: pre-activations reach beyond the kinks of relu6 (6) and hardswish (+-3)
    model, xs, out, ref = check(spec, 3, scale=3.0)
    direct = torch_activation(direct_conv(layer, model.weights, xs["x"]), activation).numpy()
    assert rel_err(out["conv"], direct) < TOL


def test_conv2d_same_even_kernel_pads_smaller_half_first():
    """PyTorch's "same" with an even kernel puts the smaller half of the padding first (top/left);
    an asymmetric (non-centred) weight makes a wrong split visible."""
    layer = {"op": "conv2d", "name": "conv", "out_channels": 1, "kernel_size": [2, 4], "padding": "same",
             "dilation": [3, 1], "bias": False}
    spec = spec_of([layer], inputs=[(1, 7, 8)])
    w = np.zeros((1, 1, 2, 4), np.float32)
    w[0, 0, 0, 0] = 1.0  # picks one shifted input pixel
    model, xs, out, ref = check(spec, 2, weights={"conv.weight": w}, tol=1e-12)


# --- linear ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("features, out_features, bias, activation, batch", [
    (1, 1, True, None, 2), (7, 3, True, None, 3), (16, 10, False, None, 2), (33, 17, True, None, 3),
    (64, 5, False, "relu", 2), (300, 40, True, None, 2),
    *[(12, 9, i % 2 == 0, act, 2 + i % 2) for i, act in enumerate(ACTIVATION_FORMS)],
], ids=ids)
def test_linear(features, out_features, bias, activation, batch):
    layer = {"op": "linear", "name": "fc", "out_features": out_features, "bias": bias}
    if activation is not None:
        layer["activation"] = activation
    spec = spec_of([layer], inputs=[(features,)])
    model, xs, out, ref = check(spec, batch, scale=3.0)
    w = model.weights
    direct = F.linear(t64(xs["x"]), t64(w["fc.weight"]), t64(w["fc.bias"]) if bias else None)
    if activation is not None:
        direct = torch_activation(direct, activation)
    assert rel_err(out["fc"], direct.numpy()) < TOL


@pytest.mark.parametrize("in_shape", [(3, 5, 7), (1, 1, 1), (8, 2, 3)], ids=ids)
def test_flatten_then_linear(in_shape):
    """flatten must follow PyTorch's (C, H, W) order, which the linear weights then depend on."""
    spec = spec_of([{"op": "flatten", "name": "flat"},
                    {"op": "linear", "name": "fc", "out_features": 6, "activation": "tanh"}],
                   inputs=[in_shape], outputs=["flat", "fc"])
    check(spec, 3)


def test_linear_rejects_image_input():
    spec = spec_of([{"op": "linear", "name": "fc", "out_features": 3}])
    with pytest.raises(cnngraph.ShapeError, match="flatten"):
        cnngraph.compile(spec, batch_size=2, optimize=False)


# --- batch_norm2d ---------------------------------------------------------------------------------

@pytest.mark.parametrize("channels, hw, eps, batch", [
    (1, (5, 5), None, 2), (3, (11, 13), None, 3), (8, (4, 7), 1e-3, 2), (16, (1, 1), 0.1, 2), (5, (9, 2), 1e-5, 3),
], ids=ids)
def test_batch_norm2d(channels, hw, eps, batch):
    layer = {"op": "batch_norm2d", "name": "bn"}
    if eps is not None:
        layer["eps"] = eps
    spec = spec_of([layer], inputs=[(channels, *hw)])
    rng = np.random.default_rng(channels)
    c = (channels,)
    weights = {"bn.weight": rng.normal(0, 1.5, c), "bn.bias": rng.normal(0, 1, c),
               "bn.running_mean": rng.normal(0, 2, c), "bn.running_var": rng.uniform(0.05, 4, c)}
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    model, xs, out, ref = check(spec, batch, weights=weights, scale=2.0)
    direct = F.batch_norm(t64(xs["x"]), t64(weights["bn.running_mean"]), t64(weights["bn.running_var"]),
                          t64(weights["bn.weight"]), t64(weights["bn.bias"]), training=False,
                          eps=1e-5 if eps is None else eps)
    assert rel_err(out["bn"], direct.numpy()) < TOL


def test_batch_norm2d_ignores_num_batches_tracked():
    spec = spec_of([{"op": "batch_norm2d", "name": "bn"}], inputs=[(4, 3, 3)])
    weights = random_weights(spec, 3)
    model = cnngraph.compile(spec, batch_size=2, optimize=False,
                             weights={**weights, "bn.num_batches_tracked": np.array(7.0)})
    x = random_inputs(spec, 2, 5)["x"]
    assert rel_err(model(x), run_spec(spec, weights, x)["bn"]) < TOL


# --- activations as layers ------------------------------------------------------------------------

@pytest.mark.parametrize("in_shape", [(3, 7, 9), (17,)], ids=ids)
@pytest.mark.parametrize("activation", ACTIVATION_FORMS, ids=ids)
def test_activation_layer(activation, in_shape):
    layer = {"op": activation} if isinstance(activation, str) else dict(activation)
    layer["name"] = "act"
    spec = spec_of([layer], inputs=[in_shape])
    # scale 4: values well beyond +-3 and 6 so every piece of relu6/hardswish is exercised
    check(spec, 3 if len(in_shape) == 1 else 2, scale=4.0)


def test_activation_extreme_values_are_finite():
    """sigmoid/silu/gelu/tanh must not overflow to NaN for large |x| (float32 exp overflows at ~88)."""
    spec = spec_of([{"op": op, "name": op, "inputs": ["x"]} for op in ("sigmoid", "silu", "tanh", "gelu")],
                   inputs=[(64,)], outputs=["sigmoid", "silu", "tanh", "gelu"])
    check(spec, 2, scale=60.0)


def test_activation_chain_on_same_input():
    """Several activation layers reading one tensor: in-place implementations must not leak."""
    ops = ["relu", "sigmoid", "hardswish", "leaky_relu", "gelu"]
    spec = spec_of([{"op": op, "name": f"a{i}", "inputs": ["x"]} for i, op in enumerate(ops)]
                   + [{"op": "add", "name": "sum", "inputs": [f"a{i}" for i in range(len(ops))]}],
                   inputs=[(3, 5, 6)], outputs=[*(f"a{i}" for i in range(len(ops))), "sum"])
    check(spec, 2, scale=3.0)


# --- pools ----------------------------------------------------------------------------------------

def pool_ok(size, kernel, padding) -> bool:
    """Whether PyTorch accepts it: the kernel fits the padded input (so the output is >= 1)."""
    return all(s + 2 * p >= k for s, k, p in zip(size, pair(kernel), pair(padding)))


def pool_cases():
    cases = []
    kernels = [1, 2, 3, 4, 5, [2, 3], [3, 2], [1, 3], [5, 2]]
    strides = [None, 1, 2, 3, [1, 2], [2, 3]]
    sizes = [(11, 13), (5, 5), (7, 8), (6, 9), (10, 10)]
    i = 0
    for k in kernels:
        kh, kw = pair(k)
        if kh == kw:
            paddings = list(range(kh // 2 + 1))
        else:
            paddings = [0, [kh // 2, kw // 2], [0, kw // 2]]
        for s, p, ceil in itertools.product(strides, paddings, (False, True)):
            size = sizes[i % len(sizes)]
            i += 1
            if pool_ok(size, k, p):
                cases.append((size, k, s, p, ceil))
    # ceil_mode windows that would start in the right padding (PyTorch drops them), and windows
    # clipped by the right border; plus default stride = kernel with ceil
    cases += [((5, 5), 2, 2, 1, True), ((5, 5), 2, None, 1, True), ((7, 7), 3, 2, 1, True),
              ((6, 6), 4, 3, 2, True), ((4, 4), 2, 3, 1, True), ((8, 9), 3, 3, 1, True),
              ((5, 6), [2, 3], [2, 2], [1, 1], True), ((3, 3), 2, 2, 1, True), ((1, 1), 1, 2, 0, True),
              ((2, 2), 3, 2, 1, True), ((9, 9), 5, 3, 2, True)]
    return [pytest.param((3, *size), k, s, p, ceil, id=f"{n}-" + ids(dict(size=size, k=k, s=s, p=p, ceil=ceil)))
            for n, (size, k, s, p, ceil) in enumerate(cases)]


@pytest.mark.parametrize("in_shape, kernel, stride, padding, ceil_mode", pool_cases())
def test_pools(in_shape, kernel, stride, padding, ceil_mode):
    """max_pool2d and avg_pool2d (count_include_pad on and off) over one input, against the oracle
    and against direct F.max_pool2d / F.avg_pool2d calls."""
    common = {"kernel_size": kernel, "padding": padding, "ceil_mode": ceil_mode, "inputs": ["x"]}
    if stride is not None:
        common["stride"] = stride
    layers = [{"op": "max_pool2d", "name": "maxp", **common},
              {"op": "avg_pool2d", "name": "avgp_inc", **common},
              {"op": "avg_pool2d", "name": "avgp_exc", "count_include_pad": False, **common}]
    spec = spec_of(layers, inputs=[in_shape], outputs=["maxp", "avgp_inc", "avgp_exc"])
    model, xs, out, ref = check(spec, 2)
    x = t64(xs["x"])
    args = (tup(kernel), tup(stride), tup(padding))
    direct = {"maxp": F.max_pool2d(x, *args, ceil_mode=ceil_mode),
              "avgp_inc": F.avg_pool2d(x, *args, ceil_mode=ceil_mode, count_include_pad=True),
              "avgp_exc": F.avg_pool2d(x, *args, ceil_mode=ceil_mode, count_include_pad=False)}
    for name, d in direct.items():
        assert model.graph.nodes[name]["shape"] == tuple(d.shape), name
        assert rel_err(out[name], d.numpy()) < TOL, name


def test_pool_shape_inference_grid():
    """Output shapes of both pools for every small geometry, ceil_mode on and off, equal PyTorch's;
    where PyTorch refuses (output too small), cnngraph raises a ShapeError."""
    mismatches = []
    for size, k, s, ceil in itertools.product(range(1, 11), range(1, 6), range(1, 4), (False, True)):
        for p in range(k // 2 + 1):
            try:
                want = tuple(F.max_pool2d(torch.zeros(1, 1, size, size + 1), k, s, p, ceil_mode=ceil).shape)
            except RuntimeError:
                want = None
            for op in ("max_pool2d", "avg_pool2d"):
                spec = spec_of([{"op": op, "name": "p", "kernel_size": k, "stride": s, "padding": p,
                                 "ceil_mode": ceil}], inputs=[(1, size, size + 1)])
                try:
                    got = cnngraph.build(spec, batch_size=1).nodes["p"]["shape"]
                except cnngraph.ShapeError:
                    got = None
                if got != want:
                    mismatches.append((op, size, k, s, p, ceil, got, want))
    assert not mismatches, mismatches[:10]


def test_conv_shape_inference_grid():
    mismatches = []
    for size, k, s, d, p in itertools.product(range(1, 10), range(1, 6), range(1, 4), range(1, 4),
                                               [0, 1, 2, "valid", "same"]):
        if p == "same" and s != 1:
            continue
        try:
            want = tuple(F.conv2d(torch.zeros(1, 1, size, size + 2), torch.zeros(1, 1, k, k), None,
                                  s, p, d).shape)
        except RuntimeError:
            want = None
        spec = spec_of([{"op": "conv2d", "name": "c", "out_channels": 1, "kernel_size": k, "stride": s,
                         "dilation": d, "padding": p}], inputs=[(1, size, size + 2)])
        try:
            got = cnngraph.build(spec, batch_size=1).nodes["c"]["shape"]
        except cnngraph.ShapeError:
            got = None
        if got != want:
            mismatches.append((size, k, s, d, p, got, want))
    assert not mismatches, mismatches[:10]


@pytest.mark.parametrize("in_shape, batch", [((3, 11, 13), 2), ((5, 1, 1), 3), ((2, 1, 9), 2), ((7, 4, 4), 3)],
                         ids=ids)
def test_global_avg_pool2d(in_shape, batch):
    spec = spec_of([{"op": "global_avg_pool2d", "name": "gap"}], inputs=[in_shape])
    model, xs, out, ref = check(spec, batch)
    assert rel_err(out["gap"], F.adaptive_avg_pool2d(t64(xs["x"]), 1).numpy()) < TOL


# --- layout and combination ops -------------------------------------------------------------------

@pytest.mark.parametrize("in_shape", [(3, 11, 13), (1, 1, 1), (2, 1, 5), (10,)], ids=ids)
def test_flatten(in_shape):
    spec = spec_of([{"op": "flatten", "name": "flat"}], inputs=[in_shape])
    model, xs, out, ref = check(spec, 2)
    np.testing.assert_array_equal(out["flat"], torch.flatten(torch.from_numpy(xs["x"]), 1).numpy())


@pytest.mark.parametrize("in_shape", [(3, 11, 13), (10,)], ids=ids)
@pytest.mark.parametrize("p", [None, 0.0, 0.5, 0.9])
def test_dropout_is_identity(in_shape, p):
    layer = {"op": "dropout", "name": "drop"}
    if p is not None:
        layer["p"] = p
    spec = spec_of([layer, {"op": "relu", "name": "after"}], inputs=[in_shape], outputs=["drop", "after"])
    model, xs, out, ref = check(spec, 2)
    np.testing.assert_array_equal(out["drop"], xs["x"])
    np.testing.assert_array_equal(out["after"], np.maximum(xs["x"], 0))


@pytest.mark.parametrize("in_shape", [(3, 11, 13), (6,)], ids=ids)
@pytest.mark.parametrize("n_inputs", [2, 3])
def test_add_network_inputs(in_shape, n_inputs):
    """add of 2 or 3 separate network inputs."""
    spec = spec_of([{"op": "add", "name": "sum", "inputs": [f"x{i}" for i in range(n_inputs)]}],
                   inputs=[in_shape] * n_inputs)
    model, xs, out, ref = check(spec, 3)
    np.testing.assert_allclose(out["sum"], sum(t64(v) for v in xs.values()).numpy(), rtol=1e-6, atol=1e-6)


def test_add_branches_and_residual():
    """Residual block: two conv branches and the input itself summed; plus the same input twice."""
    spec = spec_of([
        {"op": "conv2d", "name": "a", "out_channels": 4, "kernel_size": 3, "padding": 1, "inputs": ["x"]},
        {"op": "conv2d", "name": "b", "out_channels": 4, "kernel_size": 1, "inputs": ["x"], "activation": "relu"},
        {"op": "add", "name": "sum3", "inputs": ["a", "b", "x"]},
        {"op": "add", "name": "twice", "inputs": ["sum3", "sum3"]},
        {"op": "relu", "name": "out"},
    ], inputs=[(4, 11, 13)], outputs=["sum3", "twice", "out"])
    check(spec, 2)


def test_add_rejects_mismatched_shapes():
    spec = spec_of([{"op": "add", "name": "sum", "inputs": ["x0", "x1"]}], inputs=[(3, 5, 5), (3, 5, 6)])
    with pytest.raises(cnngraph.ShapeError):
        cnngraph.compile(spec, batch_size=2, optimize=False)


@pytest.mark.parametrize("shapes", [
    [(3, 11, 13), (5, 11, 13)], [(1, 7, 9), (4, 7, 9), (2, 7, 9)], [(6,), (9,)], [(3,), (1,), (7,)],
    [(2, 1, 1), (3, 1, 1)],
], ids=ids)
def test_concat_network_inputs(shapes):
    spec = spec_of([{"op": "concat", "name": "cat", "inputs": [f"x{i}" for i in range(len(shapes))]}],
                   inputs=shapes)
    model, xs, out, ref = check(spec, 2)
    np.testing.assert_array_equal(out["cat"], np.concatenate(list(xs.values()), axis=1))


def test_concat_branches():
    """Fire-module style: two conv branches of one squeeze layer concatenated, then the input again."""
    spec = spec_of([
        {"op": "conv2d", "name": "squeeze", "out_channels": 3, "kernel_size": 1, "activation": "relu"},
        {"op": "conv2d", "name": "e1", "out_channels": 4, "kernel_size": 1, "activation": "relu"},
        {"op": "conv2d", "name": "e3", "out_channels": 5, "kernel_size": 3, "padding": 1, "inputs": ["squeeze"]},
        {"op": "concat", "name": "cat", "inputs": ["e1", "e3", "x"]},
        {"op": "concat", "name": "twice", "inputs": ["x", "x"]},
    ], inputs=[(6, 9, 11)], outputs=["cat", "twice"])
    check(spec, 3)


@pytest.mark.parametrize("in_shape, axis", [
    ((5, 7, 9), None), ((5, 7, 9), 1), ((5, 7, 9), 2), ((5, 7, 9), 3), ((5, 7, 9), -1), ((5, 7, 9), -2),
    ((5, 7, 9), -3), ((1, 3, 3), 1), ((10,), None), ((10,), 1), ((10,), -1), ((1,), 1),
], ids=ids)
def test_softmax(in_shape, axis):
    layer = {"op": "softmax", "name": "sm"}
    if axis is not None:
        layer["axis"] = axis
    spec = spec_of([layer], inputs=[in_shape])
    model, xs, out, ref = check(spec, 2, scale=5.0)
    direct = F.softmax(t64(xs["x"]), dim=1 if axis is None else axis).numpy()
    assert rel_err(out["sm"], direct) < TOL


def test_softmax_large_logits_are_stable():
    spec = spec_of([{"op": "softmax", "name": "sm"}], inputs=[(32,)])
    check(spec, 2, scale=500.0)


@pytest.mark.parametrize("axis", [0, 4, -4, 2])
def test_softmax_rejects_bad_axis(axis):
    shape = (10,) if axis == 2 else (3, 4, 5)
    spec = spec_of([{"op": "softmax", "name": "sm", "axis": axis}], inputs=[shape])
    with pytest.raises(cnngraph.CnnGraphError):
        cnngraph.compile(spec, batch_size=2, optimize=False)


@pytest.mark.parametrize("in_shape, scale", [
    ((3, 11, 13), 1), ((3, 11, 13), 2), ((2, 5, 7), 3), ((2, 5, 7), [2, 3]), ((4, 3, 4), [1, 2]),
    ((1, 1, 1), [3, 1]),
], ids=ids)
def test_upsample2d(in_shape, scale):
    spec = spec_of([{"op": "upsample2d", "name": "up", "scale_factor": scale}], inputs=[in_shape])
    model, xs, out, ref = check(spec, 2)
    direct = F.interpolate(t64(xs["x"]), scale_factor=tup(scale), mode="nearest").numpy()
    np.testing.assert_array_equal(out["up"], direct.astype(np.float32))


# --- two-layer compositions -----------------------------------------------------------------------

@pytest.mark.parametrize("layers", [
    [{"op": "conv2d", "out_channels": 6, "kernel_size": 3, "bias": False}, {"op": "batch_norm2d"}],
    [{"op": "conv2d", "out_channels": 6, "kernel_size": 3, "stride": 2}, {"op": "max_pool2d", "kernel_size": 2,
                                                                           "ceil_mode": True}],
    [{"op": "conv2d", "out_channels": 6, "kernel_size": 3}, {"op": "leaky_relu", "negative_slope": 0.3}],
    [{"op": "upsample2d", "scale_factor": 2}, {"op": "conv2d", "out_channels": 2, "kernel_size": 3,
                                                "padding": "same"}],
    [{"op": "global_avg_pool2d"}, {"op": "flatten"}, {"op": "linear", "out_features": 4}, {"op": "softmax"}],
    [{"op": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
     {"op": "dropout", "p": 0.2}],
], ids=lambda layers: "+".join(layer["op"] for layer in layers))
def test_compositions(layers):
    """Short chains, every layer compared (all are outputs), default names <op>_<index>."""
    names = [f"{layer['op']}_{i}" for i, layer in enumerate(layers)]
    spec = spec_of(layers, inputs=[(3, 11, 13)], outputs=names)
    check(spec, 2)


# --- backend paths that ordinary sizes do not reach ------------------------------------------------

@pytest.mark.parametrize("budget", [64, 4096, 50_000], ids=["tiny", "rows", "samples"])
@pytest.mark.parametrize("fields", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=[3, 5], stride=2, dilation=[1, 2], padding=[1, 2], groups=2),
], ids=ids)
def test_conv2d_chunked_im2col(monkeypatch, budget, fields):
    """The NumPy conv folds samples / splits rows to keep its column buffer under a byte budget;
    a small budget exercises the per-row and the multi-sample chunking that big inputs would take."""
    from cnngraph.ops.base import Scratch
    monkeypatch.setattr(Scratch, "budget", budget)
    spec = spec_of([{"op": "conv2d", "name": "conv", "out_channels": 6, **fields}], inputs=[(4, 11, 13)])
    check(spec, 3)


@pytest.mark.parametrize("layout", ["fortran", "strided"])
def test_non_contiguous_inputs(layout):
    """Inputs that are views (not C-contiguous) give the same result as their copies."""
    spec = spec_of([{"op": "flatten", "name": "flat", "inputs": ["x0"]},
                    {"op": "linear", "name": "fc", "out_features": 3, "inputs": ["x1"]},
                    {"op": "conv2d", "name": "conv", "out_channels": 2, "kernel_size": 3, "inputs": ["x0"]}],
                   inputs=[(3, 5, 7), (8,)], outputs=["flat", "fc", "conv"])
    weights = random_weights(spec, 0)
    model = cnngraph.compile(spec, batch_size=2, weights=weights, optimize=False)
    xs = random_inputs(spec, 2, 9)
    if layout == "fortran":
        views = {k: np.asfortranarray(v) for k, v in xs.items()}
    else:
        views = {k: np.repeat(v, 2, axis=-1)[..., ::2] for k, v in xs.items()}
    for v in views.values():
        assert not v.flags.c_contiguous
    out = model(views)
    ref = run_spec(spec, weights, xs)
    for name in ref:
        assert rel_err(out[name], ref[name]) < TOL, name


# --- the same small specs through the optimizer ---------------------------------------------------

OPTIMIZER_CASES = {
    # conv with bias -> BN: the folded bias is b * scale + shift
    "conv_bias_bn_relu": ([
        {"op": "conv2d", "name": "c", "out_channels": 5, "kernel_size": 3, "padding": 1},
        {"op": "batch_norm2d", "name": "bn", "eps": 1e-3},
        {"op": "relu", "name": "r"}], ["r"], {"c+bn+r": "conv2d+batch_norm2d+relu"}),
    "conv_nobias_bn_gelu_tanh": ([
        {"op": "conv2d", "name": "c", "out_channels": 6, "kernel_size": [3, 1], "groups": 3, "bias": False},
        {"op": "batch_norm2d", "name": "bn"},
        {"op": "gelu", "name": "a", "approximate": "tanh"}], ["a"], {"c+bn+a": "conv2d+batch_norm2d+gelu_tanh"}),
    "depthwise_bn_leaky": ([
        {"op": "conv2d", "name": "c", "out_channels": 6, "kernel_size": 3, "groups": 6, "padding": "same"},
        {"op": "batch_norm2d", "name": "bn"},
        {"op": "leaky_relu", "name": "a", "negative_slope": 0.2}], ["a"], {"c+bn+a": "conv2d+batch_norm2d+leaky_relu"}),
    # the conv output has a second reader: neither BN nor the activation may be merged into it
    "conv_two_readers": ([
        {"op": "conv2d", "name": "c", "out_channels": 6, "kernel_size": 3, "padding": 1},
        {"op": "batch_norm2d", "name": "bn"},
        {"op": "relu", "name": "r", "inputs": ["c"]},
        {"op": "add", "name": "sum", "inputs": ["bn", "r", "c"]}], ["sum"], {}),
    # an intermediate asked for as an output must stay observable
    "conv_output_kept": ([
        {"op": "conv2d", "name": "c", "out_channels": 6, "kernel_size": 3},
        {"op": "batch_norm2d", "name": "bn"},
        {"op": "silu", "name": "s"}], ["c", "bn", "s"], {}),
    # conv with its own activation: BN comes after the activation and must not be folded
    "conv_act_bn": ([
        {"op": "conv2d", "name": "c", "out_channels": 6, "kernel_size": 3, "activation": "relu"},
        {"op": "batch_norm2d", "name": "bn"}], ["bn"], {}),
    "linear_dropout_act": ([
        {"op": "global_avg_pool2d", "name": "g"}, {"op": "flatten", "name": "f"},
        {"op": "dropout", "name": "d", "p": 0.3},
        {"op": "linear", "name": "fc", "out_features": 7},
        {"op": "hardswish", "name": "h"}, {"op": "softmax", "name": "sm"}], ["sm"], {"fc+h": "linear+hardswish"}),
    "bn_on_input_and_after_add": ([
        {"op": "batch_norm2d", "name": "bn0"},
        {"op": "conv2d", "name": "c", "out_channels": 6, "kernel_size": 1},
        {"op": "add", "name": "sum", "inputs": ["c", "bn0"]},
        {"op": "batch_norm2d", "name": "bn1"}], ["bn1"], {}),
}


@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
def test_optimized_small_networks(case):
    """optimize=True must give PyTorch's answer too: BN folding (with and without a conv bias) and
    activation fusion happen only where they are valid."""
    layers, outputs, fused = OPTIMIZER_CASES[case]
    spec = spec_of(layers, inputs=[(6, 9, 11)], outputs=outputs)
    weights = random_weights(spec, 4)
    rng = np.random.default_rng(5)
    for key in weights:  # BN statistics far from identity, so a wrong fold shows
        if key.endswith(("running_mean", "bias")):
            weights[key] = rng.normal(0, 1, weights[key].shape).astype(np.float32)
        elif key.endswith("running_var"):
            weights[key] = rng.uniform(0.1, 3, weights[key].shape).astype(np.float32)
    raw = cnngraph.compile(spec, batch_size=2, weights=weights, optimize=False)
    model = cnngraph.compile(spec, batch_size=2, weights=weights, optimize=True)
    xs = random_inputs(spec, 2, 6, 2.0)
    out, raw_out = model(xs["x"]), raw(xs["x"])
    out = out if isinstance(out, dict) else {outputs[0]: out}
    raw_out = raw_out if isinstance(raw_out, dict) else {outputs[0]: raw_out}
    ref = run_spec(spec, weights, xs)
    for name in outputs:
        assert model.graph.nodes[name]["shape"] == ref[name].shape
        assert rel_err(out[name], ref[name]) < TOL, name
        assert rel_err(out[name], raw_out[name]) < TOL, name
    ops = {"+".join(attrs["layers"]): attrs["op"] for _, attrs in model.graph.nodes(data=True)}
    for layers_joined, op in fused.items():
        assert ops.get(layers_joined) == op, ops
