"""`predict` on Ray (a local instance of 2 CPUs): the same rows as the local path, and `Predictor`
in a Ray Data pipeline of one's own."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("PIL")

import cnngraph  # noqa: E402
from cnngraph.ray import Predictor  # noqa: E402
from test_predict import TINY, images  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def same_rows(local, remote):
    assert [r["input"] for r in remote] == [r["input"] for r in local]
    for a, b in zip(local, remote):
        assert a.keys() == b.keys() and a["error"] == b["error"] and a.get("classes") == b.get("classes")
        assert a.get("labels") == b.get("labels")
        if a.get("probabilities"):
            np.testing.assert_allclose(b["probabilities"], a["probabilities"], rtol=1e-6)


def test_predict_on_ray_gives_the_local_rows(tmp_path, local_ray):
    images(tmp_path / "imgs", 5)  # and a corrupt and an empty file
    local = list(cnngraph.predict(TINY, [tmp_path / "imgs"], batch_size=2, device="cpu", top=3))
    remote = list(cnngraph.predict(TINY, [tmp_path / "imgs"], batch_size=2, device="cpu", top=3, ray="auto",
                                   workers=2))
    same_rows(local, remote)
    assert sum(bool(r["error"]) for r in remote) == 2


def test_predictor_in_a_pipeline_of_ones_own(local_ray):
    model = cnngraph.compile(TINY, batch_size=4, device="cpu")
    xs = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    ds = ray.data.from_items([{"x": x} for x in xs])
    rows = ds.map_batches(Predictor, fn_constructor_kwargs={"spec": TINY, "batch_size": 4, "device": "cpu",
                                                            "top": 2}, batch_size=4,
                          compute=ray.data.ActorPoolStrategy(size=1)).take_all()
    logits = np.concatenate([model(xs[:4]), model(np.concatenate([xs[4:], np.zeros_like(xs[:2])]))[:2]])
    assert [list(r["classes"]) for r in rows] == [list(np.argsort(-l)[:2]) for l in logits]


def test_cli_predict_ray_writes_the_same_table(tmp_path):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    images(tmp_path / "imgs", 3)
    cli = [sys.executable, "-m", "cnngraph.cli", "predict", str(spec), str(tmp_path / "imgs"), "--device", "cpu"]
    plain = subprocess.run([*cli, "-o", str(tmp_path / "a.csv")], capture_output=True, text=True)
    on_ray = subprocess.run([*cli, "-o", str(tmp_path / "b.csv"), "--ray", "--workers", "1"], capture_output=True,
                            text=True)
    assert plain.returncode == on_ray.returncode == 3, on_ray.stderr[-2000:]
    a, b = (list(csv.DictReader((tmp_path / f).open())) for f in ("a.csv", "b.csv"))
    assert [r["input"] for r in a] == [r["input"] for r in b] and [r["class_1"] for r in a] == [r["class_1"] for r in b]
