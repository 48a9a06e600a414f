"""Weights: .npz and .safetensors round trips (our own reader and writer), interop with the
`safetensors` package, dtype handling, every WeightsError a user can meet, dict vs file, and the
seeded initialisation (deterministic, and stable per layer when the network is edited)."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cnngraph
from cnngraph.weights import expected_shapes, init_weights
from test_cli import SMALL

# conv -> batch norm -> relu, a residual add, and a linear head: every kind of weight key
SPEC = {**SMALL, "layers": [*SMALL["layers"][:5], {"op": "max_pool2d", "name": "pool", "kernel_size": 2},
                            *SMALL["layers"][6:]]}
KEYS = {"conv.weight": (4, 3, 3, 3), "bn.weight": (4,), "bn.bias": (4,), "bn.running_mean": (4,),
        "bn.running_var": (4,), "skip.weight": (4, 3, 1, 1), "skip.bias": (4,), "fc.weight": (5, 64),
        "fc.bias": (5,)}


def spec_with(*extra_layers, after: str | None = None) -> dict:
    """SPEC with layers inserted after the layer named `after` (default: at the end)."""
    layers = list(SPEC["layers"])
    at = len(layers) if after is None else 1 + [layer["name"] for layer in layers].index(after)
    return {**SPEC, "layers": layers[:at] + list(extra_layers) + layers[at:]}


def trained_weights(seed: int = 1) -> dict[str, np.ndarray]:
    """Weights that differ from the default initialisation, with a positive running_var."""
    rng = np.random.default_rng(seed)
    weights = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in KEYS.items()}
    weights["bn.running_var"] = rng.uniform(0.5, 2.0, KEYS["bn.running_var"]).astype(np.float32)
    return weights


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def run(weights, x, spec=SPEC) -> np.ndarray:
    return cnngraph.compile(spec, batch_size=x.shape[0], device="cpu", weights=weights)(x)


def test_expected_keys_follow_pytorch_state_dict():
    g = cnngraph.build(SPEC)
    assert {key: shape for key, (shape, _) in expected_shapes(g).items()} == KEYS
    assert expected_shapes(g)["bn.running_var"][1] == "bn"


# --- round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    weights = trained_weights()
    weights["extra.f16"] = np.arange(6, dtype=np.float16).reshape(2, 3)
    weights["extra.f64"] = np.linspace(0, 1, 5)
    weights["extra.scalar"] = np.array(2.5, np.float32)
    weights["extra.strided"] = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]  # not contiguous
    path = tmp_path / f"w{suffix}"
    cnngraph.save_weights(weights, path)
    loaded = cnngraph.load_weights(path)
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_safetensors_written_by_the_package_loads(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    weights = trained_weights()
    weights["fc.bias"] = weights["fc.bias"].astype(np.float16)
    st.save_file(weights, str(tmp_path / "w.safetensors"), metadata={"format": "np"})
    assert_same_arrays(cnngraph.load_weights(tmp_path / "w.safetensors"), weights)


def test_safetensors_written_by_us_loads_in_the_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    weights = {**trained_weights(), "half": np.ones((2, 2), np.float16), "count": np.arange(3, dtype=np.int64)}
    cnngraph.save_weights(weights, tmp_path / "w.safetensors")
    assert_same_arrays(st.load_file(str(tmp_path / "w.safetensors")), weights)


def assert_same_arrays(loaded, weights):
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


def test_bfloat16_safetensors_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    tensor = torch.randn(4, 3, 3, 3).to(torch.bfloat16)
    st_torch.save_file({"conv.weight": tensor}, str(tmp_path / "w.safetensors"))
    loaded = cnngraph.load_weights(tmp_path / "w.safetensors")["conv.weight"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, tensor.float().numpy())


def test_torch_state_dict_keys_are_accepted(tmp_path, x):
    """A PyTorch module whose submodule names equal the layer names: its state_dict() loads as is,
    num_batches_tracked included, and gives PyTorch's result."""
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    nn = torch.nn
    torch.manual_seed(0)
    m = nn.ModuleDict({"conv": nn.Conv2d(3, 4, 3, padding=1, bias=False), "bn": nn.BatchNorm2d(4),
                       "skip": nn.Conv2d(3, 4, 1), "fc": nn.Linear(64, 5)}).eval()
    with torch.no_grad():
        m["bn"].running_mean.uniform_(-0.5, 0.5)
        m["bn"].running_var.uniform_(0.5, 2.0)
        m["bn"].weight.uniform_(0.5, 1.5)
        t = torch.from_numpy(x)
        h = torch.relu(m["bn"](m["conv"](t))) + m["skip"](t)
        expected = m["fc"](torch.flatten(torch.nn.functional.max_pool2d(h, 2), 1)).numpy()
    state = m.state_dict()
    assert "bn.num_batches_tracked" in state
    st_torch.save_file(state, str(tmp_path / "w.safetensors"))
    out = run(tmp_path / "w.safetensors", x)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


# --- dtypes ----------------------------------------------------------------------------------------

def test_float64_weights_are_cast_and_agree(x):
    weights = trained_weights()
    out32 = run(weights, x)
    with pytest.warns(cnngraph.CnnGraphWarning, match="converted 9 float64 weight tensor"):
        out64 = run({k: v.astype(np.float64) for k, v in weights.items()}, x)
    assert out64.dtype == np.float32
    np.testing.assert_array_equal(out64, out32)  # float32 -> float64 -> float32 is exact


def test_float16_weights_are_cast_and_close(x):
    weights = trained_weights()
    half = {k: v.astype(np.float16) for k, v in weights.items()}
    with pytest.warns(cnngraph.CnnGraphWarning, match="converted 9 float16 weight tensor"):
        out16 = run(half, x)
    assert out16.dtype == np.float32
    np.testing.assert_array_equal(out16, run({k: v.astype(np.float32) for k, v in half.items()}, x))
    out32 = run(weights, x)
    assert np.linalg.norm(out16 - out32) / np.linalg.norm(out32) < 5e-3  # float16 rounding only


def test_compiled_weights_are_float32():
    with pytest.warns(cnngraph.CnnGraphWarning):
        model = cnngraph.compile(SPEC, device="cpu", weights={k: v.astype(np.float64) for k, v in trained_weights().items()})
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in model.weights.values())


# --- errors ----------------------------------------------------------------------------------------

def weights_error(weights, file=None) -> cnngraph.WeightsError:
    with pytest.raises(cnngraph.WeightsError) as info:
        cnngraph.compile(SPEC, device="cpu", weights=weights)
    message = str(info.value)
    assert "\n" not in message
    if file is not None:
        assert message.startswith(str(file)) and info.value.file == str(file)
    return info.value


def test_missing_key():
    weights = trained_weights()
    del weights["bn.running_var"]
    err = weights_error(weights)
    assert err.layer == "bn"
    assert 'missing key "bn.running_var"' in str(err) and "(4,)" in str(err)


def test_extra_key_is_an_error_but_num_batches_tracked_is_ignored(x):
    weights = trained_weights()
    err = weights_error({**weights, "bn.gamma": np.ones(4, np.float32)})
    assert 'unexpected key "bn.gamma"' in str(err)
    assert "bn.running_mean" in str(err)  # lists the keys that layer does have
    err = weights_error({**weights, "head.weight": np.ones(4, np.float32)})
    assert 'unexpected key "head.weight"' in str(err) and "no layer of that name" in str(err)
    out = run({**weights, "bn.num_batches_tracked": np.array(100, np.int64)}, x)
    np.testing.assert_array_equal(out, run(weights, x))


def test_wrong_shape_names_key_layer_and_both_shapes(tmp_path):
    weights = trained_weights()
    weights["conv.weight"] = np.ones((4, 3, 5, 5), np.float32)
    cnngraph.save_weights(weights, tmp_path / "w.npz")
    err = weights_error(tmp_path / "w.npz", file=tmp_path / "w.npz")
    assert err.layer == "conv"
    message = str(err)
    assert 'layer "conv"' in message and '"conv.weight"' in message
    assert "(4, 3, 5, 5)" in message and "expected (4, 3, 3, 3)" in message


def test_integer_dtype():
    weights = trained_weights()
    weights["fc.bias"] = np.arange(5, dtype=np.int32)
    err = weights_error(weights)
    assert err.layer == "fc" and '"fc.bias"' in str(err) and "int32" in str(err) and "floating point" in str(err)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(tmp_path, bad):
    weights = trained_weights()
    weights["skip.weight"][1, 2, 0, 0] = bad
    cnngraph.save_weights(weights, tmp_path / "w.safetensors")
    err = weights_error(tmp_path / "w.safetensors", file=tmp_path / "w.safetensors")
    assert err.layer == "skip" and '"skip.weight"' in str(err) and "NaN" in str(err)


@pytest.mark.parametrize("cut", [4, 20, 100])
def test_truncated_safetensors(tmp_path, cut):
    path = tmp_path / "w.safetensors"
    cnngraph.save_weights(trained_weights(), path)
    blob = path.read_bytes()
    path.write_bytes(blob[:cut] if cut < 100 else blob[:-cut])
    with pytest.raises(cnngraph.WeightsError) as info:
        cnngraph.load_weights(path)
    assert str(path) in str(info.value) and "safetensors" in str(info.value)
    assert "truncated" in str(info.value) or "shorter" in str(info.value)


def safetensors_blob(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


MALFORMED = 'entry "a" has a malformed dtype, shape or data_offsets'


@pytest.mark.parametrize("blob, why", [
    (safetensors_blob({"a": {"dtype": "F32", "shape": ["4"], "data_offsets": [0, 16]}}, bytes(16)), MALFORMED),
    (safetensors_blob({"a": {"dtype": "F32", "shape": [4], "data_offsets": ["0", 16]}}, bytes(16)), MALFORMED),
    (safetensors_blob({"a": {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}}, bytes(16)), MALFORMED),
    (safetensors_blob({"a": {"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}}, bytes(16)), MALFORMED),
    (safetensors_blob({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, bytes(16)), MALFORMED),
    (safetensors_blob({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, bytes(16)),
     'entry "a" holds 16 bytes, its shape [5] of F32 needs 20'),
    (safetensors_blob({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 15]}}, bytes(16)),
     'entry "a" holds 15 bytes, its shape [4] of F32 needs 16'),
    (safetensors_blob({"a": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16)),
     'entry "a" has unsupported dtype C64'),
    (safetensors_blob({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}}, bytes(16)),
     'entry "a" points past the end of the data (truncated?)'),
    (safetensors_blob({"a": {"dtype": "F32", "shape": [4]}}, bytes(16)), 'entry "a" lacks dtype, shape or data_offsets'),
    (safetensors_blob({"a": "F32"}), 'entry "a" lacks dtype, shape or data_offsets'),
    (safetensors_blob(["a"]), "header is not a JSON object"),
    (struct.pack("<Q", 4) + b"{\xff}x", "header is not JSON (UnicodeDecodeError)"),
    (struct.pack("<Q", 6) + b"{'a':}", "header is not JSON (JSONDecodeError)"),
    (struct.pack("<Q", 2**63) + b"{}", "the header runs past the end of the file (truncated?)"),
    (b"\x08\x00", "shorter than its 8-byte header length"),
], ids=["shape_str", "offset_str", "dtype_list", "shape_float", "shape_negative", "size_mismatch",
        "odd_bytes", "complex", "past_the_data", "no_offsets", "entry_str", "header_list", "header_bytes",
        "header_not_json", "header_huge", "shorter_than_8"])
def test_malformed_safetensors(tmp_path, blob, why):
    path = tmp_path / "w.safetensors"
    path.write_bytes(blob)
    with pytest.raises(cnngraph.WeightsError) as info:
        cnngraph.load_weights(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    assert f"not a valid safetensors file: {why}" in str(info.value)  # its own reason, not a generic one


class _Marker:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_npz_with_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "w.npz"
    weights = {k: v for k, v in trained_weights().items()}
    np.savez(path, **weights, evil=np.array([_Marker(marker)], dtype=object))
    with pytest.raises(cnngraph.WeightsError) as info:
        cnngraph.load_weights(path)
    assert str(path) in str(info.value) and 'entry "evil" holds Python objects' in str(info.value)
    assert not marker.exists(), "the .npz was unpickled"
    with pytest.raises(cnngraph.WeightsError):
        cnngraph.compile(SPEC, device="cpu", weights=path)
    assert not marker.exists()


@pytest.mark.parametrize("content, why", [
    (b"", "not a .npz file (a zip archive of .npy arrays)"),
    (b"PK\x03\x04 not really a zip", "a zip archive cut short or corrupt, without its directory at the end"),
    (b"\x80\x04 pickle", "not a .npz file (a zip archive of .npy arrays)"),
    (b"plain text", "not a .npz file (a zip archive of .npy arrays)")], ids=["empty", "bad_zip", "pickle", "text"])
def test_corrupt_npz(tmp_path, content, why):
    path = tmp_path / "w.npz"
    path.write_bytes(content)
    with pytest.raises(cnngraph.WeightsError) as info:
        cnngraph.load_weights(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert why in str(info.value)


def test_missing_file(tmp_path):
    for name in ("w.npz", "w.safetensors"):
        with pytest.raises(cnngraph.WeightsError) as info:
            cnngraph.load_weights(tmp_path / name)
        assert name in str(info.value) and "No such file" in str(info.value)


@pytest.mark.parametrize("name", ["w.pt", "w.pth", "w.bin", "weights"])
def test_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x02}q\x00.")  # a pickle: must not be opened as one
    with pytest.raises(cnngraph.WeightsError) as info:
        cnngraph.load_weights(path)
    assert ".npz" in str(info.value) and ".safetensors" in str(info.value) and name in str(info.value)
    with pytest.raises(cnngraph.WeightsError):
        cnngraph.save_weights(trained_weights(), tmp_path / f"out-{name}")
    assert not (tmp_path / f"out-{name}").exists()


def test_unsupported_dtype_is_not_half_written(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises(cnngraph.WeightsError) as info:
        cnngraph.save_weights({"a": np.ones(2, np.complex64)}, path)
    assert '"a"' in str(info.value)
    assert list(tmp_path.iterdir()) == []


# --- dict vs file ----------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_dict_and_file_give_the_same_model(tmp_path, x, suffix):
    weights = trained_weights()
    path = tmp_path / f"w{suffix}"
    cnngraph.save_weights(weights, path)
    from_dict = cnngraph.compile(SPEC, batch_size=2, device="cpu", weights=weights)
    from_file = cnngraph.compile(SPEC, batch_size=2, device="cpu", weights=str(path))
    assert not from_dict.random_weights and not from_file.random_weights
    np.testing.assert_array_equal(from_dict(x), from_file(x))
    assert set(from_dict.weights) == set(from_file.weights) == set(KEYS)


def test_compiled_weights_reproduce_the_model(tmp_path, x):
    """`model.weights` are the spec's weights as given (batch norm not yet folded): saving them and
    compiling again gives the same model, and compiling does not change the caller's arrays."""
    weights = trained_weights()
    copies = {k: v.copy() for k, v in weights.items()}
    model = cnngraph.compile(SPEC, batch_size=2, device="cpu", weights=weights)
    for key, value in copies.items():
        np.testing.assert_array_equal(weights[key], value)
        np.testing.assert_array_equal(model.weights[key], value)
    cnngraph.save_weights(model.weights, tmp_path / "w.npz")
    again = cnngraph.compile(SPEC, batch_size=2, device="cpu", weights=tmp_path / "w.npz")
    np.testing.assert_array_equal(model(x), again(x))


# --- seeded initialisation ----------------------------------------------------------------------------

def test_seeded_init_is_deterministic(x):
    a = cnngraph.compile(SPEC, batch_size=2, device="cpu", seed=5)
    b = cnngraph.compile(SPEC, batch_size=2, device="cpu", seed=5)
    c = cnngraph.compile(SPEC, batch_size=2, device="cpu", seed=6)
    assert a.random_weights and set(a.weights) == set(KEYS)
    for key in KEYS:
        np.testing.assert_array_equal(a.weights[key], b.weights[key])
        assert not np.array_equal(a.weights[key], c.weights[key]), key
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.allclose(a(x), c(x))


def test_seeded_init_does_not_depend_on_batch_size():
    one, eight = (init_weights(cnngraph.build(SPEC, n), seed=0) for n in (1, 8))
    for key in KEYS:
        np.testing.assert_array_equal(one[key], eight[key])


def test_seeded_init_is_he_scaled():
    spec = {"format_version": 1, "inputs": [{"name": "x", "shape": [64, 16, 16]}],
            "layers": [{"op": "conv2d", "name": "big", "out_channels": 128, "kernel_size": 3}]}
    w = cnngraph.compile(spec, device="cpu").weights["big.weight"]
    fan_in = 64 * 3 * 3
    assert abs(w.std() - np.sqrt(2 / fan_in)) < 0.05 * np.sqrt(2 / fan_in)
    assert abs(w.mean()) < 0.01


def test_layer_weights_do_not_change_when_a_layer_is_added():
    before = init_weights(cnngraph.build(SPEC), seed=3)
    extra_conv = {"op": "conv2d", "name": "extra", "out_channels": 4, "kernel_size": 3, "padding": 1}
    for spec in (spec_with(extra_conv, after="act"),  # in the middle, shapes kept
                 spec_with({"op": "relu", "name": "r"}, {"op": "linear", "name": "head", "out_features": 3})):
        after = init_weights(cnngraph.build(spec), seed=3)
        assert set(before) < set(after)
        for key, value in before.items():
            np.testing.assert_array_equal(after[key], value, err_msg=key)


# --- hostile files: nothing read twice, nothing read unused ----------------------------------------

def within_budget(call, seconds=2.0, peak_bytes=40 * 2**20):
    """What `call` returns (or the WeightsError it raises), checked to take under `seconds` and
    `peak_bytes` of Python memory: far less than the hostile file would cost if it were obeyed."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        try:
            result = call()
        except cnngraph.WeightsError as err:
            result = err
        elapsed, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < seconds and peak < peak_bytes, f"{elapsed:.1f} s, {peak / 2**20:.0f} MiB"
    return result


def refused(call) -> str:
    err = within_budget(call)
    assert isinstance(err, cnngraph.WeightsError), err
    assert "\n" not in str(err)
    return str(err)


ENTRY = 2**20  # bytes: one entry of the hostile files


@pytest.mark.parametrize("offsets, why", [
    ([[0, ENTRY]] * 200, 'entries "k0" and "k1" overlap'),  # 200 keys on the same megabyte: 200 MB if obeyed
    ([[0, ENTRY], [ENTRY // 2, ENTRY * 3 // 2]], "overlap"),
    ([[0, ENTRY], [ENTRY + 8, 2 * ENTRY + 8]], "leave a gap between them"),
    ([[8, ENTRY + 8]], "do not cover"),  # a gap before the first entry
    ([[0, ENTRY - 8]], "do not cover"),  # bytes left over after the last
    ([[ENTRY, 0]], "run backwards"),
], ids=["same_bytes_200x", "overlap", "gap", "gap_first", "bytes_left_over", "backwards"])
def test_safetensors_entries_must_lie_back_to_back(tmp_path, offsets, why):
    header = {f"k{i}": {"dtype": "U8", "shape": [abs(end - begin)], "data_offsets": [begin, end]}
              for i, (begin, end) in enumerate(offsets)}
    data_size = max(max(pair) for pair in offsets) + (8 if why == "do not cover" and offsets[0][0] == 0 else 0)
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_blob(header, bytes(data_size)))
    message = refused(lambda: cnngraph.load_weights(path))
    assert why in message and message.startswith(str(path))


def test_safetensors_keys_are_checked_before_any_data_is_read(tmp_path, x):
    """An unused entry costs nothing: an unknown key is refused, and an ignored one skipped, unread
    (each here a 256 MiB sparse entry: reading it would show in the memory budget)."""
    weights = trained_weights()
    for extra, dtype in (("head.weight", "F32"), ("bn.num_batches_tracked", "I64")):
        path = tmp_path / f"{extra}.safetensors"
        cnngraph.save_weights(weights, path)
        blob = path.read_bytes()
        (header_len,) = struct.unpack("<Q", blob[:8])
        header, data = json.loads(blob[8:8 + header_len]), blob[8 + header_len:]
        size = 256 * 2**20
        header[extra] = {"dtype": dtype, "shape": [size // 8, 2] if dtype == "F32" else [size // 8],
                         "data_offsets": [len(data), len(data) + size]}
        path.write_bytes(safetensors_blob(header, data))
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size + size)  # sparse: no disk, but there to read
        result = within_budget(lambda: cnngraph.compile(SPEC, batch_size=2, device="cpu", weights=path))
        if extra == "head.weight":
            assert isinstance(result, cnngraph.WeightsError) and 'unexpected key "head.weight"' in str(result)
        else:
            np.testing.assert_array_equal(result(x), run(weights, x))


def npz_bomb(path, bomb_key: str, bomb_bytes: int = 64 * 2**20, arrays=None) -> None:
    """An .npz of `arrays` plus an entry `bomb_key` of zeros that deflate to a thousandth of their size."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for key, value in (arrays or {}).items():
            with z.open(key + ".npy", "w") as member:
                np.lib.format.write_array(member, value)
        with z.open(bomb_key + ".npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (bomb_bytes // 4,)})
            for _ in range(bomb_bytes // ENTRY):
                member.write(bytes(ENTRY))


def test_npz_keys_are_checked_before_any_entry_is_decompressed(tmp_path, x):
    weights = trained_weights()
    for extra in ("head.weight", "bn.num_batches_tracked"):
        path = tmp_path / f"{extra}.npz"
        npz_bomb(path, extra, arrays=weights)
        assert path.stat().st_size < 2**20  # a 64 MiB entry in a file of a few hundred KiB
        result = within_budget(lambda: cnngraph.compile(SPEC, batch_size=2, device="cpu", weights=path))
        if extra == "head.weight":
            assert isinstance(result, cnngraph.WeightsError) and 'unexpected key "head.weight"' in str(result)
        else:
            np.testing.assert_array_equal(result(x), run(weights, x))


def test_npz_entry_of_the_wrong_shape_is_refused_before_its_data(tmp_path):
    path = tmp_path / "w.npz"
    weights = trained_weights()
    del weights["fc.weight"]
    npz_bomb(path, "fc.weight", arrays=weights)  # (16M,) where the network wants (5, 64)
    message = refused(lambda: cnngraph.compile(SPEC, device="cpu", weights=path))
    assert '"fc.weight" has shape (16777216,), expected (5, 64)' in message


def with_repeated_records(blob: bytes, copies: int, renamed: bool) -> bytes:
    """A one-entry zip whose central-directory record is repeated `copies` times: all naming the
    entry (duplicates), or each its own name of the same length (overlaps: one blob, many entries)."""
    end = blob.rfind(b"PK\x05\x06")
    directory_size, directory_at = struct.unpack("<II", blob[end + 12:end + 20])
    record = blob[directory_at:directory_at + directory_size]
    name_length = struct.unpack("<H", record[28:30])[0]
    records = []
    for i in range(copies):
        name = record[46:46 + name_length]
        if renamed:
            name = name[:-8] + b"%04d" % i + name[-4:]  # "xxxx0001.npy"
        records.append(record[:46] + name + record[46 + name_length:])
    directory = b"".join(records)
    tail = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, copies, copies, len(directory), directory_at, 0)
    return blob[:directory_at] + directory + tail


@pytest.mark.parametrize("renamed", [False, True], ids=["duplicated", "overlapping"])
def test_npz_with_repeated_directory_records_is_refused_at_once(tmp_path, renamed):
    # 20 such records once cost 42 s: each decompressed the same blob again
    path = tmp_path / "w.npz"
    npz_bomb(path, "bombbomb")
    path.write_bytes(with_repeated_records(path.read_bytes(), 20, renamed))
    message = refused(lambda: cnngraph.load_weights(path))
    assert ("overlaps" if renamed else "appears twice") in message and message.startswith(str(path))


def test_npz_entries_written_twice_under_one_name_are_refused(tmp_path):
    path = tmp_path / "w.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name, and writes it
        with zipfile.ZipFile(path, "w") as z:
            for value in (np.zeros(4, np.float32), np.ones(4, np.float32)):
                with z.open("bn.bias.npy", "w") as member:
                    np.lib.format.write_array(member, value)
    assert 'entry "bn.bias.npy" appears twice' in refused(lambda: cnngraph.load_weights(path))
