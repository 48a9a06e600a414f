"""The race-check rendering of OpenCL (`OPENCL_RACE_CHECK`, option `race_check` or
CNNGRAPH_RACE_CHECK=1): every shared float carries the epoch (BARRIER()s passed) and thread of its
last write and read, and an access that meets another thread's access of the same epoch reads or
stores NaN and is counted. Correct kernels pass it and still match NumPy; a barrier deleted from a
generated kernel is caught by it, where the plain rendering on PoCL gives right answers (PoCL runs
a work-group's items one after another between barriers and adds barriers around loops that hold
one, and the mma emulation has barriers of its own).

The same rendering logs the first work-group's shared-memory accesses, from which the bank check
(`OpenCLBackend.bank_conflicts`) finds those a warp's banks serve in more than one pass: every
generated kernel, and every tensor-core tile an autotuner may pick, is free of them (its fragment
reads and ldmatrix rows by the rows' padding, its cp.async copies by how threads are given pixels
and pieces), and a planted conflict is caught."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnngraph
from cnngraph.backends.opencl_backend import OpenCLBackend
from cnngraph.codegen.dialects import CUDA, OPENCL, OPENCL_RACE_CHECK, RACE_LOG_INTS, bank_conflicts, race_checked
from cnngraph.errors import DeviceError
from test_backends import OPENCL_REASON, rel_err

needs_opencl = pytest.mark.skipif(OPENCL_REASON is not None, reason=str(OPENCL_REASON))


def net(layers, shape, **extra):
    return {"format_version": 1, "name": "t", "inputs": [{"name": "x", "shape": list(shape)}], "layers": layers,
            **extra}


GATED = [{"op": "global_avg_pool2d", "name": "sq", "inputs": ["x"]},  # the conv_mma that loads through registers
         {"op": "conv2d", "name": "ex", "out_channels": 8, "kernel_size": 1, "activation": "sigmoid"},
         {"op": "mul", "name": "gated", "inputs": ["x", "ex"]},
         {"op": "conv2d", "name": "c", "out_channels": 16, "kernel_size": 3, "padding": 1}]
# after an op on the network input, which keeps it NCHW: the 4-byte cp.async (tf32) or register (16-bit) loads
CONV = [{"op": "tanh"}, {"op": "conv2d", "out_channels": 70, "kernel_size": 3, "stride": 2, "padding": [1, 0, 2, 1]}]
CHANNELS_LAST = [{"op": "conv2d", "out_channels": 20, "kernel_size": 1},  # the tensors between are NHWC at tf32
                 {"op": "conv2d", "out_channels": 72, "kernel_size": 3, "stride": 2, "padding": [1, 0, 2, 1]},
                 {"op": "conv2d", "out_channels": 8, "kernel_size": 1}]
# the gated conv reads NHWC: each thread scales its own landed copies by their gates
GATED_NHWC = [{"op": "conv2d", "name": "a", "out_channels": 8, "kernel_size": 1},
              {"op": "global_avg_pool2d", "name": "sq"},
              {"op": "conv2d", "name": "ex", "out_channels": 8, "kernel_size": 1, "activation": "sigmoid"},
              {"op": "mul", "name": "gated", "inputs": ["a", "ex"]},
              {"op": "conv2d", "name": "c", "out_channels": 16, "kernel_size": 3, "padding": 1},
              {"op": "conv2d", "name": "d", "out_channels": 8, "kernel_size": 1}]
# the same over 10 channels, not whole 16-byte pixels: copied (and gated) 2 channels at a time (the
# gated conv's output is the network's: a conv after it could round a neighbouring TF32 value)
GATED_NARROW = [{**GATED_NHWC[0], "out_channels": 10}, GATED_NHWC[1], {**GATED_NHWC[2], "out_channels": 10},
                *GATED_NHWC[3:5]]
# spec, batch, precision
NETWORKS = {
    "conv_gemm_fp32": (net(CONV, (13, 11, 9)), 3, "fp32"),
    "conv_mma_cp_async_tf32": (net(CONV, (13, 11, 9)), 3, "tf32"),
    "conv_mma_gated_tf32": (net(GATED, (8, 6, 6)), 2, "tf32"),
    "conv_mma_nhwc_tf32": (net(CHANNELS_LAST, (13, 11, 9)), 3, "tf32"),  # [pixel][reduction] buffers
    "conv_mma_gated_nhwc_tf32": (net(GATED_NHWC, (8, 6, 6)), 2, "tf32"),
    "conv_mma16_nhwc_fp16": (net([{**CHANNELS_LAST[0], "out_channels": 24}, {**CHANNELS_LAST[1], "out_channels": 16},
                                  CHANNELS_LAST[2]], (13, 11, 9)), 3, "fp16"),  # 16-bit cp.async, plain ldmatrix
    "conv_mma16_fp16": (net(CONV, (13, 11, 9)), 3, "fp16"),  # HALF shared arrays, read by ldmatrix
    "conv_mma16_gated_fp16": (net(GATED, (8, 6, 6)), 2, "fp16"),  # gated in the registers
    "conv_mma16_gated_nhwc_fp16": (net(GATED_NHWC, (8, 6, 6)), 2, "fp16"),
    "conv_mma_gated_narrow_tf32": (net(GATED_NARROW, (8, 6, 6)), 2, "tf32"),  # 8-byte copies
    "conv_mma16_gated_narrow_fp16": (net(GATED_NARROW, (8, 6, 6)), 2, "fp16"),  # 4-byte copies
    "conv_fused_pool_tf32": (net([{"op": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
                                  {"op": "max_pool2d", "kernel_size": 2}], (4, 8, 8)), 2, "tf32"),
    # pools, layer norm and softmax use no shared memory: the race check leaves their kernels alone
    "pools_norm_softmax": (net([{"op": "conv2d", "name": "c", "out_channels": 6, "kernel_size": 3},
                                {"op": "avg_pool2d", "name": "p", "kernel_size": 3, "stride": 1, "padding": 1},
                                {"op": "max_pool2d", "kernel_size": 3, "stride": 2},
                                {"op": "layer_norm"}, {"op": "flatten"},
                                {"op": "linear", "out_features": 10}, {"op": "softmax"}], (3, 9, 9)), 2, "fp32"),
}


def inputs_for(model, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in model.input_shapes.items()}


def test_race_check_is_opt_in_and_instruments_only_shared_memory():
    spec, batch, precision = NETWORKS["pools_norm_softmax"]
    program = cnngraph.plan(spec, batch, precision=precision).program
    for dialect in (CUDA, OPENCL):
        assert "rc_" not in program.source(dialect)
    shared = [l for l in program.launches if race_checked(l.body)]
    assert shared and len(shared) < len(program.launches)
    for launch in program.launches:
        checked = OPENCL_RACE_CHECK.render(launch.body)
        plain = OPENCL.render(launch.body)
        if launch in shared:
            assert "GLOBAL int* rc_races, GLOBAL int* rc_log)" in checked and "rc_read(rc_seen(rc_at(&As[" in checked
            assert "As[" not in checked.replace("rc_at(&As[", "").replace("&As_rc[", "").replace("float As[", "")
        else:  # the same kernel text after the (longer) prelude
            assert checked.endswith(launch.body) and plain.endswith(launch.body)


# each thread doubles its value and adds its right neighbour's, in place in shared memory
NEIGHBOURS = """KERNEL void neighbours(GLOBAL const float* RESTRICT x, GLOBAL float* RESTRICT y)
{{
    SHARED float s[64];
    const int tid = THREAD_X;
    s[tid] = x[tid];
    const float own = s[tid] * 2.0f;  /* its own write: no barrier needed */
    BARRIER();
    const float next = s[(tid + 1) % 64];
{barrier}
    s[tid] = own + next;
    y[tid] = s[tid];
}}
"""


@needs_opencl
@pytest.mark.parametrize("barrier", ["    BARRIER();", ""], ids=["correct", "missing_barrier"])
def test_own_writes_need_no_barrier_other_threads_writes_do(barrier):
    """A thread reads back what it wrote without a barrier. Overwriting s[tid] while thread tid - 1
    may not have read it yet needs one: without it the check counts the conflict whichever of the
    two threads runs first, and NaN takes the value's place."""
    import pyopencl as cl

    context = cl.create_some_context(interactive=False)
    queue = cl.CommandQueue(context)
    kernel = cl.Program(context, OPENCL_RACE_CHECK.render(NEIGHBOURS.format(barrier=barrier))).build().neighbours
    x = np.arange(64, dtype=np.float32)
    mf = cl.mem_flags
    xb = cl.Buffer(context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=x)
    yb = cl.Buffer(context, mf.WRITE_ONLY, size=x.nbytes)
    races = cl.Buffer(context, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=np.zeros(1, np.int32))
    log = cl.Buffer(context, mf.READ_WRITE, size=64 * RACE_LOG_INTS * 4)
    kernel(queue, (64,), (64,), xb, yb, races, log)
    y, count = np.empty_like(x), np.zeros(1, np.int32)
    cl.enqueue_copy(queue, y, yb)
    cl.enqueue_copy(queue, count, races)
    if barrier:
        assert count[0] == 0 and np.array_equal(y, 2 * x + np.roll(x, -1))
    else:
        assert count[0] > 0 and np.isnan(y).any()


def access_log(addresses, width: int, line: int = 7, write: bool = False) -> np.ndarray:
    """The race-check rendering's log of one access per lane of a warp (-1: lanes that made none)."""
    log = np.full((32, RACE_LOG_INTS), -1, np.int32)
    for lane, address in enumerate(addresses):
        if address is not None:
            log[lane, :2] = (line * 64 + width * 2 + write, address)
    return log.ravel()


@pytest.mark.parametrize("addresses, width, ways", [
    ([4 * lane for lane in range(32)], 4, 1),                   # consecutive words
    ([0] * 32, 4, 1),                                           # one word, to every lane
    ([8 * lane for lane in range(32)], 4, 2),                   # every other word: 16 banks
    ([128 * lane for lane in range(32)], 4, 32),                # one bank
    ([2 * lane for lane in range(32)], 2, 1),                   # 16-bit values, two to a word
    ([16 * lane for lane in range(32)], 16, 1),                 # 16 bytes each: a phase of 8 lanes
    ([32 * lane for lane in range(32)], 16, 2),
    ([48 * lane for lane in range(8)] + [None] * 24, 16, 1),    # ldmatrix rows 3 groups apart
    ([32 * (lane % 8) for lane in range(16)] + [None] * 16, 16, 2),  # 16-byte rows 2 groups apart
    ([16 * lane for lane in range(32)], 8, 2),                  # 8 bytes of each 16: a half-warp, 8 banks used twice
])
def test_bank_check_counts_the_passes_of_a_warp_access(addresses, width, ways):
    assert bank_conflicts(access_log(addresses, width), 32) == {(7, False): ways}


TOLERANCE = {"fp32": 1e-5, "tf32": 1e-5, "fp16": 1e-4}  # against the NumPy backend at the same precision


def run_check(check, case: str, precision: str) -> None:
    """`check(case)`; on the tensor cores in a fresh interpreter whose PoCL uses one thread. With
    PoCL running work-groups on several threads, the 16-bit kernels' race check now and then counts
    conflicts that one thread never shows (0 in 240 runs, against about 1 run in 20 with two
    threads), while the plain rendering gives the same bits every time; the cause is not found.
    Since the TF32 kernels read their B fragments by ldmatrix too, so has a TF32 one (once, on a
    busy machine; 0 in 20 runs otherwise)."""
    if precision == "fp32":
        return check(case)
    code = f"import test_race_check as t; t.{check.__name__}({case!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                          env={**os.environ, "POCL_MAX_PTHREAD_COUNT": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def check_generated(case):
    spec, batch, precision = NETWORKS[case]
    ref = cnngraph.compile(spec, batch_size=batch, device="cpu", precision=precision)
    model = cnngraph.bind(cnngraph.plan(spec, batch, ref.weights, precision=precision), "opencl", race_check=True)
    assert model.backend.race_counters  # every case has a GEMM in shared memory
    xs = inputs_for(ref)
    model.backend.poison()
    assert rel_err(model(xs), ref(xs)) <= TOLERANCE[precision]
    assert model.backend.races() == {}
    assert_free_of_bank_conflicts(model.backend)


def assert_free_of_bank_conflicts(backend) -> dict:
    """Every shared-memory access the race-checked kernels of `backend` made (in their first
    work-group) is served in one pass; returns kernel -> the source lines that made them."""
    found = backend.bank_conflicts()
    assert found and all(found.values()), "every race-checked kernel logs its accesses"
    conflicts = {(kernel, line): ways for kernel, sites in found.items() for line, ways in sites.items() if ways > 1}
    assert conflicts == {}
    return {kernel: {text for text, _ in sites} for kernel, sites in found.items()}


@needs_opencl
@pytest.mark.parametrize("case", sorted(NETWORKS))
def test_generated_kernels_pass_the_race_check(case):
    run_check(check_generated, case, NETWORKS[case][2])


def drop_barrier(body: str, which: int) -> str:
    """`body` without its `which`-th BARRIER()."""
    parts = body.split("BARRIER();")
    assert len(parts) > which + 1, "the kernels below have that barrier"
    return "BARRIER();".join(parts[:which + 1]) + "/* planted: no barrier */" + "BARRIER();".join(parts[which + 1:])


# the barriers whose absence the plain rendering on PoCL hides: kernel prefix, which barrier
PLANTED = {
    # conv_gemm (two buffers, as the register-staged conv_mma): its first slice stored before it is
    # multiplied (without its slice loop's barrier, PoCL computes wrong values: no race check needed)
    "conv_gemm_after_storing_first_tile": ("conv_gemm_fp32", "conv3x3", 0),
    # the gated conv_mma: the first slice stored before it is multiplied (the mma emulation's barriers hide it)
    "conv_mma_after_storing_first_tile": ("conv_mma_gated_tf32", "gated_conv", 0),
    # the gated conv_mma's slice loop: the next slice is stored and the last one multiplied
    "conv_mma_end_of_slice": ("conv_mma_gated_tf32", "gated_conv", 1),
    # the 16-bit conv_mma16: its first slice stored before ldmatrix reads it, and its slice loop
    "conv_mma16_after_storing_first_tile": ("conv_mma16_fp16", "conv3x3", 0),
    "conv_mma16_end_of_slice": ("conv_mma16_fp16", "conv3x3", 1),
    # the cp.async pipeline's one barrier (16-bit, NHWC input): a buffer refilled while another warp
    # still multiplies it, and landed copies read before the other threads' have landed
    "conv_mma16_pipeline": ("conv_mma16_nhwc_fp16", "conv3x3", 0),
}


@needs_opencl
@pytest.mark.parametrize("case", sorted(PLANTED))
def test_race_check_catches_a_planted_missing_barrier(case):
    run_check(check_planted, case, NETWORKS[PLANTED[case][0]][2])


def check_tiles(case):
    from test_precision import ALL_TILES, tile_programs

    precision, layout = case.split("-")
    ref, programs = tile_programs(layout, precision)
    xs = inputs_for(ref)
    want = ref.backend.run_observed(dict(xs))
    assert {launch.schedule.tile for _, launch in programs} == set(ALL_TILES.values())
    for program, launch in programs:
        backend = OpenCLBackend(ref.plan, {"race_check": True}, program)
        backend.run_node_by_node({**xs, **want})
        lines = assert_free_of_bank_conflicts(backend)[launch.kernel]
        reads = {"fp16": "LDMATRIX_X4(", "tf32": "LDMATRIX_X4_F32(" if layout == "NHWC" else "= As[read][kk"}
        copies = {"fp16": "CP_ASYNC16_HALF(&As[", "tf32": "CP_ASYNC16(&As[" if layout == "NHWC" else "CP_ASYNC4(&As["}
        assert any(reads[precision] in line for line in lines), launch.schedule
        assert any(copies[precision] in line for line in lines), launch.schedule


@needs_opencl
@pytest.mark.parametrize("case", ["tf32-NHWC", "fp16-NHWC", pytest.param("tf32-NCHW", marks=pytest.mark.slow)])
def test_every_tensor_core_tile_is_free_of_bank_conflicts(case):
    """Each tile and stage count an autotuner may pick (their row paddings and thread counts
    differ): fragment reads, ldmatrix rows, cp.async copies of inputs and weights, one pass each."""
    run_check(check_tiles, case, case.split("-")[0])


def _unpadded(values: int):
    """A planted mistake: As rows without their padding (`values` fewer per row; ldmatrix's
    offsets, which name the row length, too)."""
    def plant(body: str) -> str:
        row = int(re.search(r"SHARED_VIEW\((?:float|HALF), As, \d+, \[\d+\]\[(\d+)\]", body)[1])
        body = body.replace(f"][{row}], 0);", f"][{row - values}], 0);", 1)
        return re.sub(rf"(&As\[0\]\[0\]\[0\], [^;]*\))(\s*)\* {row} \+ kk", rf"\1\2* {row - values} + kk", body)
    return plant


# a kernel given rows, pieces or values in a worse order computes the same, in more passes:
# network, kernel prefix, the plant, the line that then conflicts
PLANTED_CONFLICTS = {
    "unpadded_rows": ("conv_mma_nhwc_tf32", "conv3x3", _unpadded(4), "LDMATRIX_X4_F32("),
    "unpadded_ldmatrix_rows": ("conv_mma16_nhwc_fp16", "conv3x3", _unpadded(8), "LDMATRIX_X4("),
    "rows_in_thread_order": ("conv_mma_nhwc_tf32", "conv3x3",
                             lambda body: re.sub(r"const int a_row = [^;]*;", "const int a_row = tid / 4;", body),
                             "CP_ASYNC16(&As["),
    "pieces_in_turn": ("conv_mma_gated_narrow_tf32", "gated_conv3x3",
                       lambda body: body.replace("piece = (j + tid / 8) % 2;", "piece = j;"), "CP_ASYNC8(&As["),
    "gated_values_one_by_one": ("conv_mma16_gated_nhwc_fp16", "gated_conv3x3", lambda body: re.sub(
        r"SCALE_U16X(\d)\(&As\[(\w+)\]\[([^\]]+)\]\[([^\]]+)\], ([^;]+)\);",
        r"UNROLL for (int q = 0; q < \1; ++q) As[\2][\3][\4 + q] = STORE(LOAD(As[\2][\3][\4 + q]) * LOAD((\5)[q]));",
        body), "STORE(LOAD(As["),
}


@needs_opencl
@pytest.mark.parametrize("case", sorted(PLANTED_CONFLICTS))
def test_bank_check_catches_planted_conflicts(case):
    run_check(check_planted_conflict, case, NETWORKS[PLANTED_CONFLICTS[case][0]][2])


def planted_program(network: str, prefix: str, plant):
    """`network`'s plan; a copy of its program with `plant` (body -> body) applied to its one kernel
    named `prefix`...; that kernel; the NumPy model at its precision; inputs."""
    spec, batch, precision = NETWORKS[network]
    p = cnngraph.plan(spec, batch, precision=precision)
    program = copy.deepcopy(p.program)
    (planted,) = [l for l in program.launches if l.kernel.startswith(prefix)]
    body = plant(planted.body)
    assert body != planted.body
    planted.body = body
    ref = cnngraph.compile(spec, batch_size=batch, device="cpu", precision=precision, weights=p.weights)
    return p, program, planted, ref, inputs_for(ref)


def check_planted_conflict(case):
    network, prefix, plant, line = PLANTED_CONFLICTS[case]
    precision = NETWORKS[network][2]
    p, program, planted, ref, xs = planted_program(network, prefix, plant)
    checked = OpenCLBackend(p, {"race_check": True}, program=program)
    checked.poison()
    assert rel_err(checked.run(xs)[program.outputs[0]], ref(xs)) <= TOLERANCE[precision]  # the same values
    conflicts = {(kernel, text) for kernel, sites in checked.bank_conflicts().items()
                 for (text, _), ways in sites.items() if ways > 1}
    assert conflicts and {kernel for kernel, _ in conflicts} == {planted.kernel}
    assert any(line in text for _, text in conflicts), conflicts


def check_planted(case):
    network, prefix, which = PLANTED[case]
    precision = NETWORKS[network][2]
    p, program, planted, ref, xs = planted_program(network, prefix, lambda body: drop_barrier(body, which))
    output = program.outputs[0]

    plain = OpenCLBackend(p, program=program)  # PoCL hides the missing barrier
    plain.poison()
    assert rel_err(plain.run(xs)[output], ref(xs)) <= TOLERANCE[precision]

    checked = OpenCLBackend(p, {"race_check": True}, program=program)
    checked.poison()
    with pytest.raises(DeviceError, match=f"race check: .*{planted.kernel} [0-9]+"):
        checked.run(xs)
    assert list(checked.races()) == [planted.kernel]
    assert np.isnan(checked._download(output)).any()
