"""Reliability under bad input and faults: the memory limit, hostile weights files, odd inputs,
and NaN/Inf inputs computed exactly as PyTorch computes them (on NumPy and on the generated kernels).
Interrupted writes, the kernel cache and concurrency are in test_files.py."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

import cnngraph
from cnngraph.errors import CnnGraphWarning
from cnngraph.resources import parse_size
from test_backends import BACKENDS
from test_cli import run_main
from torch_oracle import random_weights, run_spec


def net(layers, shape=(3, 12, 12)) -> dict:
    return {"format_version": 1, "name": "t", "inputs": [{"name": "x", "shape": list(shape)}],
            "layers": layers, "outputs": [layers[-1]["name"]]}


def refused_fast(call, error=cnngraph.CnnGraphError, seconds=1.0, peak_bytes=50 * 2**20):
    """The error `call` raises, checked to come within `seconds` and `peak_bytes` of Python memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(error) as info:
            call()
        elapsed, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < seconds and peak < peak_bytes, (elapsed, peak)
    assert "\n" not in str(info.value)
    return info.value


# --- the memory limit ------------------------------------------------------------------------------

BIG_LINEAR = net([{"op": "linear", "name": "fc", "out_features": 40000}], shape=(40000,))  # 6 GiB of weights


def test_weights_over_the_limit_are_refused_before_any_is_made():
    err = refused_fast(lambda: cnngraph.compile(BIG_LINEAR, device="cpu", max_memory="1GiB"), cnngraph.ResourceError)
    assert err.layer == "fc"
    text = str(err)
    assert "6.0 GiB" in text and "1.0 GiB" in text and '"fc.weight"' in text and "max_memory" in text


def test_activations_over_the_limit_name_the_largest_tensor():
    spec = net([{"op": "conv2d", "name": "wide", "out_channels": 64, "kernel_size": 3, "padding": 1},
                {"op": "max_pool2d", "name": "pool", "kernel_size": 2},
                {"op": "conv2d", "name": "narrow", "out_channels": 8, "kernel_size": 3}], shape=(3, 256, 256))
    err = refused_fast(lambda: cnngraph.compile(spec, batch_size=64, device="cpu", max_memory="256MiB"),
                       cnngraph.ResourceError)
    assert err.layer == "wide" and "(N,64,256,256)" in str(err) and "batch 64" in str(err)
    model = cnngraph.compile(spec, batch_size=1, device="cpu", max_memory="256MiB")
    assert model.memory.total <= parse_size("256MiB")
    assert model.graph.nodes["pool"]["op"] == "conv2d+max_pool2d"  # the wide output lives in scratch
    assert model.memory.arena >= 4 * 64 * 128 * 128 and model.memory.scratch >= 4 * 64 * 256 * 256
    assert model.memory.weights == 2 * 4 * (64 * 27 + 64 + 8 * 576 + 8)  # as given, and rearranged for NumPy


def test_the_limit_is_the_final_plan_not_the_unoptimized_one():
    need = cnngraph.compile("examples/cifar_vgg.json", batch_size=64, device="cpu").memory.total
    cnngraph.compile("examples/cifar_vgg.json", batch_size=64, device="cpu", max_memory=need)
    with pytest.raises(cnngraph.ResourceError):
        cnngraph.compile("examples/cifar_vgg.json", batch_size=64, device="cpu", max_memory=need - 1)


def test_default_limit_is_a_fraction_of_this_machines_ram():
    total, what = cnngraph.resources.machine_memory()
    limit, source = cnngraph.resources.ram_limit()
    assert limit == int(0.8 * total) and what in source
    # k outputs of 4 GiB each, all alive at the end: one more than the limit holds
    k = limit // 2**32 + 1
    spec = {**net([{"op": "relu", "name": f"r{i}", "inputs": ["x"]} for i in range(k)], shape=(64, 128, 128)),
            "outputs": [f"r{i}" for i in range(k)]}
    err = refused_fast(lambda: cnngraph.compile(spec, batch_size=1024, device="cpu"), cnngraph.ResourceError)
    assert "default: 80% of this machine's" in str(err)


def test_overflowing_shapes_fail_fast():
    refused_fast(lambda: cnngraph.build(net([{"op": "conv2d", "name": "c", "out_channels": 10**12,
                                                "kernel_size": 3}])), cnngraph.ShapeError)
    refused_fast(lambda: cnngraph.build(net([{"op": "relu", "name": "r"}], shape=(3, 10**6, 10**6))),
                 cnngraph.ShapeError)
    refused_fast(lambda: cnngraph.compile("examples/lenet5.json", batch_size=10**9, device="cpu"), cnngraph.ShapeError)


def test_a_container_limit_below_the_ram_is_the_one_that_counts(tmp_path, monkeypatch):
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "unlimited").write_text("max\n")
    monkeypatch.setattr(cnngraph.resources, "CGROUP_LIMITS", (str(tmp_path / "unlimited"), str(tmp_path / "memory.max")))
    assert cnngraph.resources.machine_memory() == (2**30, "this container's memory limit")


@pytest.mark.parametrize("text, size", [(4096, 4096), ("512MiB", 2**29), ("8GB", 8 * 10**9), ("1.5g", 3 * 2**29),
                                        ("2 KiB", 2048)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", [0, -5, "lots", "5 parsecs", "-1GiB", True, "", 0.5, "0.1", 1e20])
def test_bad_sizes(text):
    with pytest.raises(cnngraph.SpecError, match="max_memory"):
        cnngraph.compile(net([{"op": "relu", "name": "r"}]), device="cpu", max_memory=text)


# --- weights files ---------------------------------------------------------------------------------

CONV = net([{"op": "conv2d", "name": "c", "out_channels": 4, "kernel_size": 3}])


def npz_member(header_shape: str, payload: bytes, dtype: str = "<f4") -> bytes:
    """A .npy entry whose header declares `header_shape` whatever `payload` holds."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {header_shape}, }}".encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def write_npz(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, blob in members.items():
            z.writestr(name + ".npy", blob)


def test_npz_claiming_a_huge_shape_is_refused_without_allocating(tmp_path):
    path = tmp_path / "w.npz"
    write_npz(path, {"c.weight": npz_member("(100000, 100000, 100)", bytes(64))})
    err = refused_fast(lambda: cnngraph.load_weights(path), cnngraph.WeightsError)
    assert '"c.weight"' in str(err) and "truncated or corrupt" in str(err) and str(path) in str(err)


def test_npz_entry_that_is_not_npy(tmp_path):
    path = tmp_path / "w.npz"
    write_npz(path, {"c.weight": b"hello, I am text"})
    err = refused_fast(lambda: cnngraph.load_weights(path), cnngraph.WeightsError)
    assert '"c.weight"' in str(err) and "not a .npy array" in str(err)


def test_npz_that_is_a_text_file(tmp_path):
    path = tmp_path / "w.npz"
    path.write_text("c.weight = [1, 2, 3]\n")
    assert "not a .npz file" in str(refused_fast(lambda: cnngraph.load_weights(path), cnngraph.WeightsError))


def test_safetensors_header_is_checked_before_the_data_is_read(tmp_path, monkeypatch):
    import json
    header = json.dumps({"c.weight": {"dtype": "F32", "shape": [4, 3, 3, 3], "data_offsets": [0, 432]},
                         "c.bias": {"dtype": "F32", "shape": [4], "data_offsets": [432, 440]}}).encode()  # 8 of 16
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(440))
    reads = []
    real_open = open

    class Recording:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Recording(real_open(p, mode, *a, **k)))
    with pytest.raises(cnngraph.WeightsError, match='"c.bias" holds 8 bytes, its shape \\[4\\] of F32 needs 16'):
        cnngraph.load_weights(path)
    assert reads == [8, len(header)]  # the header only, never the data


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_damaged_weights_files_give_one_line_errors(tmp_path, suffix):
    """Random byte flips and cuts of a real file: it loads, or raises a one-line WeightsError."""
    path = tmp_path / f"w{suffix}"
    cnngraph.save_weights(random_weights(CONV), path)
    good, rng = path.read_bytes(), np.random.default_rng(0)
    for case in range(400):
        blob = bytearray(good)
        for at in rng.integers(0, len(blob), rng.integers(1, 4)):
            blob[at] = rng.integers(0, 256)
        path.write_bytes(bytes(blob[:rng.integers(1, len(blob) + 1)] if case % 4 == 0 else blob))
        try:
            cnngraph.load_weights(path)
        except cnngraph.WeightsError as err:
            assert "\n" not in str(err) and str(err).startswith(str(path)) and not str(err).endswith(": "), str(err)


def test_npz_whose_zip_header_lies_about_its_size_is_refused_unread(tmp_path):
    path = tmp_path / "w.npz"
    write_npz(path, {"c.weight": npz_member("(274877906944,)", bytes(64))})
    blob = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central uncompressed size
        at = blob.find(signature) + offset
        blob[at:at + 4] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(blob))
    err = refused_fast(lambda: cnngraph.load_weights(path), cnngraph.WeightsError)
    assert "more than it can hold" in str(err)


def test_float64_and_float16_weights_are_converted_with_a_note():
    weights = random_weights(CONV)
    with pytest.warns(CnnGraphWarning, match="converted 1 float16, 1 float64 weight tensor"):
        cnngraph.compile(CONV, device="cpu", weights={"c.weight": weights["c.weight"].astype(np.float64),
                                                       "c.bias": weights["c.bias"].astype(np.float16)})


def test_float64_weights_beyond_float32_range_are_refused():
    weights = {k: v.astype(np.float64) for k, v in random_weights(CONV).items()}
    weights["c.weight"][0, 0, 0, 0] = 1e39
    with pytest.raises(cnngraph.WeightsError, match="beyond float32's range") as info:
        cnngraph.compile(CONV, device="cpu", weights=weights)
    assert info.value.layer == "c"


def test_nan_weight_names_the_tensor_and_the_index():
    weights = random_weights(CONV)
    weights["c.weight"][1, 2, 0, 1] = np.nan
    with pytest.raises(cnngraph.WeightsError, match=r'"c.weight" contains 1 NaN or infinite values \(the first at '
                                                    r"index \(1, 2, 0, 1\)\)"):
        cnngraph.compile(CONV, device="cpu", weights=weights)


# --- inputs ----------------------------------------------------------------------------------------

def test_non_contiguous_inputs_are_handled():
    model = cnngraph.compile(CONV, batch_size=2, device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 24)).astype(np.float32)
    views = [x[:, :, :, ::2], np.asfortranarray(x[:, :, :, :12]), x[:, :, :, 12:].transpose(0, 1, 3, 2).swapaxes(2, 3)]
    for view in views:
        assert not view.flags.c_contiguous
        np.testing.assert_array_equal(model(view), model(np.ascontiguousarray(view)))


@pytest.mark.parametrize("bad, phrase", [
    (np.zeros((2, 3, 12), np.float32), "must have shape (2, 3, 12, 12)"),
    (np.zeros((1, 3, 12, 12), np.float32), "must have shape (2, 3, 12, 12)"),
    (np.zeros((2, 3, 12, 12), np.float64), "must be float32, got float64"),
    (np.zeros((2, 3, 12, 12), np.int32), "must be float32, got int32"),
    ([[1.0]], "must be a numpy"),
])
def test_bad_inputs(bad, phrase):
    model = cnngraph.compile(CONV, batch_size=2, device="cpu")
    with pytest.raises(cnngraph.InputError) as info:
        model(bad)
    assert phrase in str(info.value)


# --- NaN and Inf inputs: computed exactly as PyTorch computes them -----------------------------------

NAN_NETS = {
    "conv_relu_pool": [{"op": "conv2d", "name": "c", "out_channels": 4, "kernel_size": 3, "activation": "relu"},
                       {"op": "max_pool2d", "name": "p", "kernel_size": 2}],  # fused: conv+relu+max_pool2d
    "overlapping_max_pool": [{"op": "max_pool2d", "name": "p", "kernel_size": 3, "stride": 2, "padding": 1}],
    "relu6_hardswish": [{"op": "relu6", "name": "a"}, {"op": "hardswish", "name": "b"}],
    "relu_leaky_avg": [{"op": "relu", "name": "r"}, {"op": "leaky_relu", "name": "l"},
                       {"op": "avg_pool2d", "name": "p", "kernel_size": 2}],
    "bn_gap_linear_softmax": [{"op": "batch_norm2d", "name": "bn"}, {"op": "global_avg_pool2d", "name": "g"},
                              {"op": "flatten", "name": "f"}, {"op": "linear", "name": "fc", "out_features": 5},
                              {"op": "softmax", "name": "sm"}],
}


def poisoned_input(shape, seed=0) -> np.ndarray:
    """Random data with NaN, +Inf and -Inf sprinkled in, some sample left entirely finite."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    for value in (np.nan, np.inf, -np.inf):
        x.reshape(-1)[rng.choice(x[:-1].size, 3, replace=False)] = value  # never in the last sample
    return x


def assert_same_non_finite(got, want):
    """NaN exactly where PyTorch has NaN, the same infinities, and close finite values."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", ["cpu", *BACKENDS])
@pytest.mark.parametrize("name", sorted(NAN_NETS))
def test_nan_and_inf_inputs_propagate_as_in_pytorch(name, device):
    spec = net(NAN_NETS[name])
    weights = random_weights(spec)
    x = poisoned_input((3, 3, 12, 12))
    want = run_spec(spec, weights, x)[spec["outputs"][0]]
    assert np.isnan(want).any() and np.isfinite(want[-1]).all()  # the case is not vacuous
    model = cnngraph.compile(spec, batch_size=3, device=device, weights=weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently, as PyTorch does: no RuntimeWarning from NumPy
        got = model(x)
    assert_same_non_finite(got, want)


# --- the same through the command line -----------------------------------------------------------

def test_run_max_memory_and_huge_batches_are_one_line(capsys):
    status, _, err = run_main(capsys, "run", "examples/lenet5.json", "--device", "cpu", "--max-memory", "100KiB")
    assert status == 2 and err.count("\n") == 1 and "over the limit of 100.0 KiB (max_memory)" in err
    status, _, err = run_main(capsys, "run", "examples/resnet18.json", "--device", "cpu", "--batch", 10**7)
    assert status == 2 and err.count("\n") == 1 and "elements" in err
    status, _, err = run_main(capsys, "run", "examples/lenet5.json", "--device", "cpu", "--max-memory", "lots")
    assert status == 2 and "max_memory must be a number of bytes or a size" in err


def test_run_accepts_nan_inputs_with_a_note(tmp_path, capsys):
    x = poisoned_input((2, 1, 32, 32))
    np.save(tmp_path / "x.npy", x)
    status, out, err = run_main(capsys, "run", "examples/lenet5.json", "--device", "cpu", "--input", tmp_path / "x.npy",
                           "--output", tmp_path / "y.npy")
    assert status == 0 and err == f"note: {tmp_path / 'x.npy'}: holds 3 NaN and 6 infinite values; they propagate " \
                                  f"through the network as in PyTorch\n"
    model = cnngraph.compile("examples/lenet5.json", batch_size=2, device="cpu")
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model(x))


def test_run_input_claiming_more_than_it_holds_is_refused_unread(tmp_path, capsys):
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 1000), }"
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + header.ljust(117) + b"\n" + bytes(8))
    status, _, err = run_main(capsys, "run", "examples/lenet5.json", "--device", "cpu", "--input", tmp_path / "x.npy")
    assert status == 2 and err.startswith(f"error: {tmp_path / 'x.npy'}: cannot read a .npy array")


def test_converted_weights_are_a_note_on_the_command_line(tmp_path, capsys):
    model = cnngraph.compile("examples/lenet5.json", device="cpu")
    cnngraph.save_weights({k: v.astype(np.float16) for k, v in model.weights.items()}, tmp_path / "w.safetensors")
    status, _, err = run_main(capsys, "run", "examples/lenet5.json", "--device", "cpu", "--weights", tmp_path / "w.safetensors")
    assert status == 0 and err.startswith("note: ") and "converted 10 float16 weight tensor(s) to float32" in err


TWO_INPUTS = {"format_version": 1, "name": "two", "inputs": [{"name": "a", "shape": [4]}, {"name": "b", "shape": [4]}],
              "layers": [{"op": "add", "name": "s", "inputs": ["a", "b"]}], "outputs": ["s"]}


def test_run_feeds_every_input_of_a_network(tmp_path, capsys):
    spec = tmp_path / "two.json"
    spec.write_text(json.dumps(TWO_INPUTS))
    status, out, _ = run_main(capsys, "run", spec, "--device", "cpu", "--batch", 2)
    assert status == 0 and "a (2, 4), b (2, 4)" in out
    a, b = np.arange(8, dtype=np.float32).reshape(2, 4), np.ones((2, 4), np.float32)
    np.savez(tmp_path / "x.npz", a=a, b=b)
    status, _, err = run_main(capsys, "run", spec, "--device", "cpu", "--input", tmp_path / "x.npz",
                              "--output", tmp_path / "y.npy")
    assert status == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), a + b)
    np.save(tmp_path / "a.npy", a)
    status, _, err = run_main(capsys, "run", spec, "--device", "cpu", "--input", tmp_path / "a.npy")
    assert status == 2 and "a.npy: the network has inputs a, b: give a .npz" in err
    np.savez(tmp_path / "only_a.npz", a=a)
    status, _, err = run_main(capsys, "run", spec, "--device", "cpu", "--input", tmp_path / "only_a.npz")
    assert status == 2 and 'only_a.npz: missing array "b" (the network\'s inputs are "a", "b"; the file holds "a")' in err


@pytest.mark.parametrize("layer, field", [({"op": "leaky_relu", "name": "l", "negative_slope": 1e308}, "negative_slope"),
                                          ({"op": "batch_norm2d", "name": "l", "eps": 1e39}, "eps")])
def test_float_parameters_must_fit_float32(layer, field):
    with pytest.raises(cnngraph.SpecError, match="float32's range") as info:
        cnngraph.build(net([layer]))
    assert info.value.layer == "l" and info.value.field == field


def test_seeded_init_holds_four_bytes_per_weight():
    tracemalloc.start()
    try:
        cnngraph.compile(net([{"op": "linear", "name": "fc", "out_features": 2000}], shape=(2500,)), device="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * 4 * 2000 * 2500, peak  # float64 draws would peak at 3x the float32 weights
