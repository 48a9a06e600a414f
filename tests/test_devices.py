"""Device names: "auto", "cpu", "cuda", "cuda:N" (one GPU, pinned) and "opencl"; every other name is
one DeviceError (Python) or one usage line (CLI) listing the valid forms. On a GPU machine (`gpu`
tests): a model bound to cuda:N allocates, launches and captures on GPU N."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import cnngraph
from cnngraph.cli import main
from cnngraph.model import parse_device
from test_backends import CUDA_REASON, OPENCL_REASON, rel_err

SPEC = {"format_version": 1, "name": "tiny", "inputs": [{"name": "x", "shape": [3, 8, 8]}],
        "layers": [{"op": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1, "activation": "relu"},
                   {"op": "max_pool2d", "kernel_size": 2}]}


@pytest.mark.parametrize("text, parsed", [("auto", ("auto", None)), ("cpu", ("cpu", None)), ("cuda", ("cuda", None)),
                                          ("cuda:0", ("cuda", 0)), ("cuda:12", ("cuda", 12)),
                                          ("opencl", ("opencl", None))])
def test_device_names(text, parsed):
    assert parse_device(text) == parsed


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:1.5", "cuda:x", "cuda:0:1", "cpu:0",
                                 "opencl:1", "auto:0", " cuda", "cuda:\u0663", "", None, 0, ["cpu"]])
def test_unknown_device_is_one_error_listing_the_forms(bad):
    with pytest.raises(cnngraph.DeviceError) as excinfo:
        cnngraph.compile(SPEC, device=bad)
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("unknown device")
    assert "valid: auto, cpu, cuda, cuda:N (GPU N, from 0), opencl" in message


def test_cli_refuses_an_unknown_device_before_reading_the_spec(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["run", "no-such-file.json", "--device", "cuda:x"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --device: expected one of auto, cpu, cuda, cuda:N" in err and "'cuda:x'" in err


@pytest.mark.skipif(CUDA_REASON is None, reason="a GPU is usable here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_not_usable(device, capsys):
    with pytest.raises(cnngraph.DeviceError, match=f'^device "{device}" is not usable: '):
        cnngraph.compile(SPEC, device=device)
    assert main(["run", "examples/lenet5.json", "--device", device]) == 2
    assert capsys.readouterr().err.strip().startswith(f'error: device "{device}" is not usable')


@pytest.mark.parametrize("device", ["cpu", pytest.param("opencl", marks=pytest.mark.skipif(
    OPENCL_REASON is not None, reason=str(OPENCL_REASON)))])
def test_model_device_is_what_compile_takes(device):
    model = cnngraph.compile(SPEC, device=device)
    assert model.device == device and f"device={device}" in repr(model)


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=str(CUDA_REASON))
@pytest.mark.parametrize("pick", ["cuda", "last"])
def test_cuda_model_is_pinned_to_its_gpu(pick):
    """"cuda" pins the GPU current at compile time, "cuda:N" GPU N (the last one here)."""
    import cupy as cp

    count = cp.cuda.runtime.getDeviceCount()
    index = count - 1 if pick == "last" else cp.cuda.Device().id
    device = f"cuda:{index}" if pick == "last" else "cuda"
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = cnngraph.compile(SPEC, batch_size=2, device="cpu")(x)
    model = cnngraph.compile(SPEC, batch_size=2, device=device)
    assert model.device == f"cuda:{index}"
    assert model.backend.arena.device.id == index and model.backend.workspace.device.id == index
    with cp.cuda.Device(0):  # whatever GPU is current when it is called, it runs on its own
        for _ in range(3):  # the third call replays the captured CUDA graph
            assert rel_err(model(x), want) < 1e-5
    with cp.cuda.Device(index):
        on_gpu = model(cp.asarray(x))
    assert on_gpu.device.id == index and rel_err(on_gpu.get(), want) < 1e-5
    if count > 1:
        other = (index + 1) % count
        with cp.cuda.Device(other):
            elsewhere = cp.asarray(x)
        with pytest.raises(cnngraph.InputError, match=f"is on cuda:{other} but the model runs on cuda:{index}"):
            model(elsewhere)


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=str(CUDA_REASON))
def test_a_gpu_index_past_the_last_is_refused():
    import cupy as cp

    count = cp.cuda.runtime.getDeviceCount()
    with pytest.raises(cnngraph.DeviceError, match=f'device "cuda:{count}" does not exist: CuPy sees {count} GPU'):
        cnngraph.compile(SPEC, device=f"cuda:{count}")


def fake_cupy(compute_capability: str, name: bytes):
    """A CuPy that sees one GPU of this compute capability and name, and nothing more."""
    import contextlib
    import types

    class Device(contextlib.nullcontext):
        id = 0

        def __init__(self, index=0):
            super().__init__()
            self.compute_capability = compute_capability

    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda index: {"name": name})
    return types.SimpleNamespace(cuda=types.SimpleNamespace(Device=Device, runtime=runtime))


@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
def test_a_gpu_without_tensor_cores_refuses_their_precisions(precision, monkeypatch, capsys):
    """A Turing card (sm_75): one line naming the card, what the precision needs and what it runs,
    from compile and from the CLI, before anything is allocated."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy("75", b"Tesla T4"))
    message = (f'precision "{precision}" needs tensor cores of sm_80 or newer; this GPU, Tesla T4, is sm_75: '
               'it runs precision "fp32"')
    with pytest.raises(cnngraph.DeviceError) as excinfo:
        cnngraph.compile(SPEC, device="cuda", precision=precision)
    assert str(excinfo.value) == message
    assert main(["run", "examples/lenet5.json", "--device", "cuda", "--precision", precision]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
