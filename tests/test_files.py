"""Files cnngraph writes: a process killed in the middle of writing leaves no partial file at the
destination; the kernel cache detects corrupted entries and rebuilds them, and processes that
compile the same network at the same time share it without corrupting it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cnngraph
from cnngraph import kernel_cache
from cnngraph.cli import main as cli_main
from test_backends import CUDA_REASON, OPENCL_REASON

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"format_version": 1, "name": "small", "inputs": [{"name": "x", "shape": [3, 16, 16]}],
         "layers": [{"op": "conv2d", "name": "c1", "out_channels": 8, "kernel_size": 3, "activation": "relu"},
                    {"op": "max_pool2d", "name": "p", "kernel_size": 2},
                    {"op": "flatten", "name": "f"}, {"op": "linear", "name": "fc", "out_features": 10}],
         "outputs": ["fc"]}
needs_opencl = pytest.mark.skipif(OPENCL_REASON is not None, reason=str(OPENCL_REASON))

# Run in a child process: every write to a file cnngraph opens through atomic_write (or to a codegen
# folder's files) prints "writing" and then sleeps, so the parent can kill it in the middle.
SLOW_WRITES = """
import os, pathlib, sys, time
import cnngraph.files

class Slow:
    def __init__(self, f):
        self.f = f
    def write(self, data):
        print("writing", flush=True)
        time.sleep(0.2)
        return self.f.write(data)
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

real_fdopen = os.fdopen
cnngraph.files.os.fdopen = lambda *a, **k: Slow(real_fdopen(*a, **k))
real_write_text = pathlib.Path.write_text
def slow_write_text(self, text, *a, **k):
    print("writing", flush=True)
    time.sleep(0.2)
    return real_write_text(self, text, *a, **k)
pathlib.Path.write_text = slow_write_text
"""


def kill_while_writing(code: str, sig=signal.SIGKILL) -> int:
    """Start `code` with slow writes, wait until it is writing, send `sig`; its exit status."""
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITES + textwrap.dedent(code)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:  # the command's own output comes first
            if line.strip() == "writing":
                break
        else:
            raise AssertionError(f"it never wrote: {child.stderr.read()}")
        child.send_signal(sig)
        return child.wait(timeout=60)
    finally:
        child.kill()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_weights_save_killed_midway_leaves_nothing_at_the_destination(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    status = kill_while_writing(f"""
        import numpy as np, cnngraph
        cnngraph.save_weights({{"a.weight": np.ones((64, 64), np.float32), "b.weight": np.ones(9, np.float32)}},
                              {str(path)!r})
    """)
    assert status == -signal.SIGKILL
    assert not path.exists()


def test_weights_save_killed_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.safetensors"
    old = {"a.weight": np.arange(6, dtype=np.float32)}
    cnngraph.save_weights(old, path)
    kill_while_writing(f"""
        import numpy as np, cnngraph
        cnngraph.save_weights({{"a.weight": np.zeros(6, np.float32)}}, {str(path)!r})
    """)
    np.testing.assert_array_equal(cnngraph.load_weights(path)["a.weight"], old["a.weight"])


def test_interrupted_save_cleans_up_its_temporary_file(tmp_path):
    path = tmp_path / "w.npz"
    status = kill_while_writing(f"""
        import numpy as np, cnngraph
        cnngraph.save_weights({{"a.weight": np.ones(9, np.float32)}}, {str(path)!r})
    """, sig=signal.SIGINT)
    assert status != 0 and list(tmp_path.iterdir()) == []  # KeyboardInterrupt: the temporary file is removed


def test_terminated_command_cleans_up_its_temporary_file(tmp_path):
    """SIGTERM (what `kill` and a job scheduler send) unwinds like Ctrl-C: the command's temporary
    file is removed and it exits with 128 + 15."""
    spec, out = tmp_path / "small.json", tmp_path / "out"
    spec.write_text(json.dumps(SMALL))
    out.mkdir()
    status = kill_while_writing(f"""
        import sys
        from cnngraph.cli import main
        sys.exit(main(["run", {str(spec)!r}, "--device", "cpu", "--output", {str(out / "y.npy")!r}]))
    """, sig=signal.SIGTERM)
    assert status == 143 and list(out.iterdir()) == []


def test_codegen_force_onto_a_symlink_replaces_the_link_and_leaves_nothing_behind(tmp_path):
    spec = tmp_path / "small.json"
    spec.write_text(json.dumps(SMALL))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not codegen's")
    link = tmp_path / "kernels"
    link.symlink_to(elsewhere, target_is_directory=True)
    assert cli_main(["codegen", str(spec), "-o", str(link), "--force"]) == 0
    assert link.is_dir() and not link.is_symlink() and (link / "manifest.json").exists()
    assert (elsewhere / "keep.txt").read_text() == "not codegen's"  # what the link pointed to is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "kernels", "small.json"]  # no .old left


def test_codegen_killed_midway_leaves_no_folder_and_keeps_an_old_one(tmp_path):
    spec = tmp_path / "small.json"
    spec.write_text(json.dumps(SMALL))
    out = tmp_path / "kernels"
    code = f"""
        from cnngraph.cli import main
        main(["codegen", {str(spec)!r}, "-o", {str(out)!r}, "--force"])
    """
    kill_while_writing(code)
    assert not out.exists()
    assert cli_main(["codegen", str(spec), "-o", str(out)]) == 0
    before = {p.name: p.read_text() for p in out.iterdir()}
    kill_while_writing(code)
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_run_output_killed_midway(tmp_path):
    spec = tmp_path / "small.json"
    spec.write_text(json.dumps(SMALL))
    out = tmp_path / "y.npy"
    kill_while_writing(f"""
        from cnngraph.cli import main
        main(["run", {str(spec)!r}, "--device", "cpu", "--output", {str(out)!r}])
    """)
    assert not out.exists()


# --- the kernel cache ------------------------------------------------------------------------------

@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CNNGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def entries(cache: Path, kind: str = "opencl") -> list[Path]:
    return sorted((cache / kind).glob("*.bin")) if (cache / kind).exists() else []


def test_entries_round_trip_and_keys_separate_their_parts(cache):
    path = kernel_cache.entry_path("t", kernel_cache.cache_key("ab", "c"))
    assert path != kernel_cache.entry_path("t", kernel_cache.cache_key("a", "bc"))
    assert kernel_cache.read_entry(path) is None
    kernel_cache.write_entry(path, b"payload")
    assert kernel_cache.read_entry(path) == b"payload"


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_a_damaged_entry_is_detected(cache, damage):
    path = kernel_cache.entry_path("t", "k")
    kernel_cache.write_entry(path, os.urandom(1000))
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[:-10], "flip": blob[:-1] + bytes([blob[-1] ^ 1]), "empty": b"",
                      "garbage": b"not a cache entry"}[damage])
    assert kernel_cache.read_entry(path) is None


def test_cache_can_be_turned_off_and_survives_an_unwritable_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNGRAPH_CACHE_DIR", "off")
    assert kernel_cache.entry_path("t", "k") is None
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("CNNGRAPH_CACHE_DIR", str(blocker))
    kernel_cache.write_entry(kernel_cache.entry_path("t", "k"), b"x")  # silently not cached
    assert kernel_cache.read_entry(kernel_cache.entry_path("t", "k")) is None


def run_small(device: str) -> np.ndarray:
    model = cnngraph.compile(SMALL, batch_size=2, device=device)
    return model(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))


NOT_A_BINARY = b"\x7fELF but not really"


@needs_opencl
@pytest.mark.parametrize("damage", ["truncate", "flip", "not_a_binary"])
def test_opencl_rebuilds_a_damaged_cache_entry(cache, damage):
    want = run_small("opencl")
    (path,) = entries(cache)
    if damage == "not_a_binary":  # passes its checksum but the driver cannot load it
        kernel_cache.write_entry(path, NOT_A_BINARY)
    else:
        blob = path.read_bytes()
        path.write_bytes(blob[:len(blob) // 2] if damage == "truncate" else blob[:-1] + bytes([blob[-1] ^ 0xFF]))
    np.testing.assert_array_equal(run_small("opencl"), want)
    rebuilt = kernel_cache.read_entry(path)  # stored whole again (PoCL's binaries differ from build to build)
    assert rebuilt is not None and rebuilt != NOT_A_BINARY


@needs_opencl
def test_opencl_loads_from_the_cache(cache, monkeypatch):
    want = run_small("opencl")
    import pyopencl as cl
    built_from_source = []
    real_program = cl.Program

    def spy(context, *args):
        if len(args) == 1:  # Program(context, source)
            built_from_source.append(True)
        return real_program(context, *args)

    monkeypatch.setattr(cl, "Program", spy)
    np.testing.assert_array_equal(run_small("opencl"), want)
    assert built_from_source == [] and len(entries(cache)) == 1


CONCURRENT_COMPILE = """
import json, os, sys, time
import numpy as np, cnngraph
while not os.path.exists(sys.argv[1]):  # start together
    time.sleep(0.001)
model = cnngraph.compile(json.loads(sys.argv[3]), batch_size=2, device="opencl")
np.save(sys.argv[2], model(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)))
"""


@needs_opencl
def test_processes_compiling_the_same_network_at_once_share_the_cache(cache, tmp_path):
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", CONCURRENT_COMPILE, str(go), str(tmp_path / f"y{i}.npy"),
                                  json.dumps(SMALL)],
                                 cwd=ROOT, env={**os.environ, "CNNGRAPH_CACHE_DIR": str(cache)},
                                 stderr=subprocess.PIPE, text=True) for i in range(3)]
    go.touch()
    for child in children:
        assert child.wait(timeout=300) == 0, child.stderr.read()
    outputs = [np.load(tmp_path / f"y{i}.npy") for i in range(3)]
    assert all(np.array_equal(outputs[0], y) for y in outputs) and np.isfinite(outputs[0]).all()
    (path,) = entries(cache)
    assert kernel_cache.read_entry(path) is not None
    assert [p.name for p in (cache / "opencl").iterdir()] == [path.name]  # no temporary files left
    np.testing.assert_array_equal(run_small("opencl"), outputs[0])


HAMMER = """
import os, sys, hashlib
from pathlib import Path
from cnngraph.kernel_cache import read_entry, write_entry
path, me = Path(sys.argv[1]), int(sys.argv[2])
seen = 0
for i in range(300):
    body = os.urandom(1 + (me * 7919 + i * 104729) % 200000)
    write_entry(path, hashlib.sha256(body).digest() + body)
    got = read_entry(path)
    if got is not None:  # another writer's payload, never a torn one
        assert hashlib.sha256(got[32:]).digest() == got[:32], "torn entry"
        seen += 1
print(seen)
"""


def test_concurrent_writers_and_readers_never_see_a_torn_entry(tmp_path):
    path = tmp_path / "cache" / "t" / "k.bin"
    children = [subprocess.Popen([sys.executable, "-c", HAMMER, str(path), str(me)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in range(4)]
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        assert int(out) == 300  # every read found a whole entry (a damaged one would read as None)
    assert [p.name for p in path.parent.iterdir()] == ["k.bin"]


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_REASON is not None, reason=str(CUDA_REASON))
def test_cuda_autotuning_choices_come_from_the_cache(cache, monkeypatch):
    from cnngraph.backends.cuda_backend import CudaBackend
    first = cnngraph.compile(SMALL, batch_size=4, device="cuda", autotune=True)
    assert entries(cache, "autotune") and first.backend.tuning

    def no_timing(*_):
        raise AssertionError("a cached layer was timed again")

    monkeypatch.setattr(CudaBackend, "_time_candidates", no_timing)
    again = cnngraph.compile(SMALL, batch_size=4, device="cuda", autotune=True)
    assert again.backend.tuning == first.backend.tuning and again.backend.schedules == first.backend.schedules
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(again(x), cnngraph.compile(SMALL, batch_size=4, device="cpu")(x), rtol=1e-4, atol=1e-5)


def test_a_failed_folder_write_leaves_no_folder_and_no_leftovers(tmp_path):
    from cnngraph.files import atomic_write_folder
    (tmp_path / ".out.stale.old").mkdir()  # left by an earlier killed run: must not come back as out
    with pytest.raises(cnngraph.CnnGraphError, match="cannot write"):
        atomic_write_folder(tmp_path / "out", {"a.cu": "x", "no/such/dir.cu": "y"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.stale.old"]


def test_written_files_get_an_ordinary_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        cnngraph.save_weights({"a.weight": np.ones(2, np.float32)}, tmp_path / "w.npz")
    finally:
        os.umask(umask)
    assert (tmp_path / "w.npz").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("entry, choice", [(b"[1, 0.5, 0.7]", (1, 0.5, 0.7)), (b"[true, 0.5, 0.7]", None),
                                           (b"[3, 0.5, 0.7]", None), (b"[1, 2]", None), (b"\xff garbage", None),
                                           (b'{"pick": 1}', None), (None, None)])
def test_a_cached_autotuning_choice_is_checked_before_use(entry, choice):
    from cnngraph.codegen.autotune import cached_choice
    assert cached_choice(entry, count=3) == choice
