"""Every registered op, from the op registry: its examples (`Layer.examples`) run against the
PyTorch reference it declares (`Layer.torch_reference`, float64), against the independent spec
interpreter of torch_oracle.py where that knows the op, on every kernel backend against NumPy
(arenas NaN-poisoned), through its CUDA kernels' NVRTC compile, and through an ONNX round trip
(export, ONNX Runtime, import). A new op with examples is tested here without editing this file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import cnngraph
from cnngraph.graph import own_in_shapes
from cnngraph.ops import ACTIVATIONS, OPS, TRAITS
from test_backends import BACKENDS, check_against_numpy, rel_err
from torch_oracle import KNOWN_OPS, run_spec

CASES = [pytest.param(op, i, id=f"{op}-{i}{'-' + ex.note.replace(' ', '_') if ex.note else ''}")
         for op, cls in OPS.items() for i, ex in enumerate(cls.examples)]


def spec_of(op: str, index: int) -> dict:
    example = OPS[op].examples[index]
    names = [f"x{i}" for i in range(len(example.inputs))]
    return {"format_version": 1, "name": f"{op}_{index}",
            "inputs": [{"name": n, "shape": list(s)} for n, s in zip(names, example.inputs)],
            "layers": [{"op": op, "name": "y", "inputs": names, **example.fields}]}


def inputs_of(spec: dict, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i["name"]: rng.standard_normal((batch, *i["shape"])).astype(np.float32) for i in spec["inputs"]}


def test_every_op_declares_what_the_registry_promises():
    for op, cls in OPS.items():
        assert cls.examples, f"{op} has no examples"
        assert cls.traits <= set(TRAITS), op
        assert cls.lower is not cnngraph.ops.Layer.lower, f"{op} has no kernel lowering"
        assert cls.to_onnx is not cnngraph.ops.Layer.to_onnx, f"{op} has no ONNX export"
        assert cls.torch_reference is not cnngraph.ops.Layer.torch_reference, f"{op} has no PyTorch reference"
        assert cls.__dict__.get("__doc__"), f"{op} has no docstring (its description in the JSON schema)"
    assert set(ACTIVATIONS) <= set(OPS)  # every activation is a layer too


def test_ops_are_listed_family_by_family_convolutions_first():
    """The order of the JSON Schema's op list and of the messages that name the valid ops."""
    modules = [cls.__module__.rsplit(".", 1)[-1] for cls in OPS.values()]
    families = list(dict.fromkeys(modules))
    assert families[:6] == ["conv", "linear", "norm", "activation", "pool", "tensor"]
    assert modules == sorted(modules, key=families.index)  # each family's ops together


@pytest.mark.parametrize("op, index", CASES)
def test_op_example_against_its_pytorch_reference(op, index):
    spec = spec_of(op, index)
    model = cnngraph.compile(spec, batch_size=2, optimize=False, device="cpu", seed=index)
    xs = inputs_of(spec, 2, seed=index + 10)
    got = model(xs if len(xs) > 1 else next(iter(xs.values())))
    layer = model.graph.nodes["y"]["compute"].spec
    weights = {k: torch.from_numpy(v.astype(np.float64)) for k, v in model.graph.nodes["y"]["weights"].items()}
    with torch.no_grad():
        want = layer.torch_reference([torch.from_numpy(x.astype(np.float64)) for x in xs.values()], weights).numpy()
    assert got.shape == want.shape == model.graph.nodes["y"]["shape"]
    assert rel_err(got, want) < 1e-5
    if op in KNOWN_OPS:  # the op's own reference agrees with the oracle's independent reading of the spec
        oracle = run_spec(spec, model.weights, xs)["y"]
        assert rel_err(want, oracle) < 1e-12


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("op, index", CASES)
def test_op_example_kernels_against_numpy(op, index, device):
    check_against_numpy(spec_of(op, index), device, batch=2, tol=1e-5, seed=index)


@pytest.mark.parametrize("op, index", CASES)
def test_op_example_cuda_kernels_compile(op, index):
    pytest.importorskip("cuda.bindings")
    from cnngraph.codegen.dialects import CUDA
    from cnngraph.codegen.nvrtc import compile_cuda
    program = cnngraph.plan(spec_of(op, index), 2).program
    for launch in program.launches:
        report = compile_cuda(program.source(CUDA, launch), arch="sm_80")[launch.kernel]
        assert report.stack_bytes == report.spill_stores == report.spill_loads == 0, launch.kernel


DATA_MOVEMENT = {"flatten", "reshape", "dropout", "concat", "slice", "channel_shuffle", "pad"}


@pytest.mark.parametrize("op, index", CASES)
def test_op_example_flops_count_arithmetic_only(op, index):
    """FLOPs (summary, profile's GFLOP/s) count arithmetic: none for ops that only move data."""
    model = cnngraph.plan(spec_of(op, index), batch_size=2, optimize=False)
    node = model.graph.nodes["y"]
    flops = node["compute"].spec.flops(own_in_shapes(model.graph, "y"), node["shape"][1:])
    nearest = op == "upsample2d" and OPS[op].examples[index].fields.get("mode", "nearest") == "nearest"
    assert (flops == 0) == (op in DATA_MOVEMENT or nearest), flops


@pytest.mark.parametrize("op, index", [case for case in CASES if case.values[0] in ("conv2d", "linear")])
def test_gemm_flops_are_pytorchs_count(op, index):
    """Convolution and linear FLOPs (2 per multiply-add) as PyTorch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    g = cnngraph.plan(spec_of(op, index), batch_size=1, optimize=False, seed=index).graph
    node = g.nodes["y"]
    weights = {k: torch.from_numpy(v.astype(np.float64)) for k, v in node["weights"].items()}
    xs = [torch.ones((1, *shape), dtype=torch.float64) for shape in OPS[op].examples[index].inputs]
    with FlopCounterMode(display=False) as counter:
        node["compute"].spec.torch_reference(xs, weights)
    assert node["flops"] == counter.get_total_flops()


@pytest.mark.parametrize("op, index", CASES)
def test_op_example_numpy_scratch_is_within_its_estimate(op, index):
    """run_numpy's temporaries stay within `numpy_scratch_bytes`, the figure the memory check counts
    before anything is allocated (the padded copy of an input, "pad", is budgeted by the backend)."""
    spec = spec_of(op, index)
    model = cnngraph.compile(spec, batch_size=2, optimize=False, device="cpu", seed=index)
    xs = inputs_of(spec, 2, seed=index + 30)
    model(xs if len(xs) > 1 else next(iter(xs.values())))
    used = sum(buf.nbytes for key, buf in model.backend.scratch._buffers.items() if key != "pad")
    g, compute = model.graph, model.graph.nodes["y"]["compute"]
    assert used <= compute.spec.numpy_scratch_bytes(own_in_shapes(g, "y"), compute.result_shape(g.nodes["y"]["shape"]))


@pytest.mark.parametrize("op, index", CASES)
def test_op_example_onnx_round_trip(op, index, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    spec = spec_of(op, index)
    model = cnngraph.compile(spec, batch_size=2, device="cpu", seed=index)
    exported = cnngraph.export_onnx(spec, tmp_path / "m.onnx", weights=model.weights)
    names = [node.name for node in exported.graph.node]
    assert all(names) and len(set(names)) == len(names), names  # each node named once: tools and errors cite them
    xs = inputs_of(spec, 2, seed=index + 20)
    want = model(xs if len(xs) > 1 else next(iter(xs.values())))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (ran,) = session.run(None, xs)
    assert rel_err(ran, want) < 1e-5
    spec2, weights2 = cnngraph.from_onnx(tmp_path / "m.onnx")
    again = cnngraph.compile(spec2, batch_size=2, device="cpu", weights=weights2)
    got = again(xs if len(xs) > 1 else next(iter(xs.values())))
    assert rel_err(got, want) < 1e-6


def test_every_op_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [op for op in OPS if f"`{op}`" not in readme]
    assert not missing, f"ops not in README.md: {missing}"
