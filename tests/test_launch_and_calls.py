"""Launch limits, calls from several threads, and the autotuner's choice under timing noise."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

import cnngraph
from cnngraph.codegen.autotune import choose
from cnngraph.errors import ResourceError
from test_backends import BACKENDS

SPEC = {"format_version": 1, "name": "small", "inputs": [{"name": "x", "shape": [4, 8, 8]}], "layers": [
    {"op": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "activation": "relu"},
    {"op": "global_avg_pool2d"}, {"op": "flatten"}, {"op": "linear", "out_features": 5}]}


def test_a_grid_over_cudas_limit_is_refused_when_lowering():
    groups = 70000  # blockIdx.z holds the group: at most 65535
    spec = {"format_version": 1, "name": "wide", "inputs": [{"name": "x", "shape": [2 * groups, 1, 1]}],
            "layers": [{"op": "conv2d", "name": "g", "out_channels": 2 * groups, "kernel_size": 1, "groups": groups}]}
    p = cnngraph.plan(spec)
    with pytest.raises(ResourceError, match=r'layer "g": needs 70,000 blocks in grid z .*65,535'):
        p.program  # noqa: B018 (lowering happens on first use)
    x = np.random.default_rng(0).standard_normal((1, 2 * groups, 1, 1)).astype(np.float32)
    assert cnngraph.bind(p, "cpu")(x).shape == (1, 2 * groups, 1, 1)  # NumPy needs no grid


@pytest.mark.parametrize("device", [pytest.param("cpu"), *BACKENDS])
def test_calls_from_several_threads_each_get_their_own_result(device):
    model = cnngraph.compile(SPEC, batch_size=2, device=device)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, 4, 8, 8)).astype(np.float32) for _ in range(6)]
    want = [model(x) for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(5):
            got[i] = model(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_autotune_keeps_the_default_within_the_noise():
    assert choose({0: [1.0, 1.1, 0.9], 1: [0.95, 1.0, 1.05]}) == (0, 1.0, 1.0)  # overlapping: default
    assert choose({0: [1.0, 1.02, 0.98], 1: [0.5, 0.52, 0.49], 2: [0.7, 0.7, 0.7]}) == (1, 0.5, 1.0)
    assert choose({0: [2.0, 2.0, 2.0]}) == (0, 2.0, 2.0)


def test_autotune_choice_is_stable_across_noisy_runs():
    """Candidates 1% apart with 5% noise: many simulated tuning runs all keep the default."""
    rng = random.Random(0)
    for _ in range(200):
        samples = {pick: [base * (1 + rng.uniform(-0.05, 0.05)) for _ in range(5)]
                   for pick, base in ((0, 1.0), (1, 0.99), (2, 1.01))}
        assert choose(samples)[0] == 0



def test_a_failed_graph_capture_is_ended_and_tried_again():
    """A launch that fails while the CUDA graph is being captured (the second call) must not leave
    the model's stream capturing: the capture is ended, no graph is kept, and the next call
    captures afresh (a CudaBackend's launch logic on a fake stream; no GPU needed)."""
    from cnngraph.backends.cuda_backend import CudaBackend

    replayed = []

    class Graph:
        def launch(self, stream):
            replayed.append(stream)

    class Stream:
        capturing, captures = False, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def begin_capture(self):
            self.capturing, self.captures = True, self.captures + 1

        def end_capture(self):
            self.capturing = False
            return Graph()

    failing = [False]

    def kernel(grid, block, args, shared_mem):
        if failing[0]:
            raise RuntimeError("launch failed")

    backend = object.__new__(CudaBackend)
    backend.stream, backend.graph, backend.use_graph, backend.calls = Stream(), None, True, 0
    backend.launches = [(kernel, (1, 1, 1), (32, 1, 1), (), 0)]
    backend._launch_all()  # the first call runs plainly
    failing[0] = True
    with pytest.raises(RuntimeError, match="launch failed"):
        backend._launch_all()  # the second captures, and fails
    assert not backend.stream.capturing and backend.graph is None and not replayed
    failing[0] = False
    backend._launch_all()  # the third captures again, and replays the graph
    assert backend.stream.captures == 2 and isinstance(backend.graph, Graph) and replayed == [backend.stream]
