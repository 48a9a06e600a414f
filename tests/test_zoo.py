"""The torchvision zoo examples (examples/generate_zoo.py) against plain-PyTorch mirrors of the
torchvision models (tests/zoo_torch.py): the spec's weight keys are exactly the state_dict's, so the
state dict loads as it is, and the compiled network (NumPy backend, batch 1, 224x224) gives the
mirror's output in float64 to 1e-4 of its largest magnitude.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cnngraph
from cnngraph.weights import expected_shapes
from zoo_torch import MODELS, randomized_state

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
ZOO = sorted(MODELS)
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def mirror(name: str) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """The seeded PyTorch mirror, in eval mode, and its randomized state dict as float32 arrays."""
    torch.manual_seed(0)
    model = MODELS[name]()
    return model, randomized_state(model, seed=1)


def test_zoo_files_are_what_the_generator_writes():
    """The checked-in specs are examples/generate_zoo.py's output (rerun it after editing it)."""
    loader = importlib.util.spec_from_file_location("generate_zoo", EXAMPLES_DIR / "generate_zoo.py")
    generator = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(generator)
    for name in ZOO:
        net = generator.NETWORKS[name]()
        spec = json.loads((EXAMPLES_DIR / f"{name}.json").read_text())
        assert spec["name"] == net.name == name
        assert spec["layers"] == net.layers, f"{name}.json is stale: run python examples/generate_zoo.py"


@pytest.mark.parametrize("name", ZOO)
def test_weight_keys_are_torchvision_keys(name):
    model, weights = mirror(name)
    assert set(cnngraph.weights_from_torch(model.state_dict())) == set(weights)  # the documented route
    expected = expected_shapes(cnngraph.build(EXAMPLES_DIR / f"{name}.json"))
    assert sorted(set(weights) - set(expected)) == [], "state_dict keys the spec lacks"
    assert sorted(set(expected) - set(weights)) == [], "spec keys the state_dict lacks"
    for key, value in weights.items():
        shape = expected[key][0]  # a Linear's (K, C) weight fills a 1x1 conv's (K, C, 1, 1)
        assert shape[:value.ndim] == value.shape and all(d == 1 for d in shape[value.ndim:]), key


@pytest.mark.parametrize("name", ZOO)
def test_matches_torch(name):
    model, weights = mirror(name)
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    compiled = cnngraph.compile(EXAMPLES_DIR / f"{name}.json", batch_size=1, weights=weights, device="cpu")
    got = compiled(x)
    with torch.no_grad():  # the same float32 weights, widened exactly, computed in float64
        want = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
    assert got.shape == want.shape == (1, 1000)
    err = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
    assert err <= TOL, f"{name}: max |error| / max |reference| = {err:.2e}"
