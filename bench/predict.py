"""`predict` throughput: images/s of `cnngraph.predict` over a folder of JPEGs (decoding, the
spec's preprocessing, batching) against calling the compiled model on ready arrays, same network,
batch and device, alternating in one process.

    python bench/predict.py [--network resnet18] [--images 96] [--batch 16] [--device cpu] [--repeats 3] [--ray]

With --ray, also `predict --ray` on a local Ray instance with 1 and 2 inference actors (each
compiles the network once: part of its time). Writes bench/results/predict-<date>.json. The aim
(issue 14): predict >= 0.9x the ready-array rate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import cnngraph  # noqa: E402
from results_file import run_record, save  # noqa: E402


def make_jpegs(folder: Path, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):  # photo-like sizes, so the resize does real work
        h, w = rng.integers(300, 500, 2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", default="resnet18")
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ray", action="store_true", help="also on a local Ray instance, 1 and 2 actors")
    args = p.parse_args()
    spec = ROOT / "examples" / f"{args.network}.json"
    model = cnngraph.compile(spec, batch_size=args.batch, device=args.device)
    x = np.random.default_rng(0).standard_normal((args.batch, *next(iter(model.input_shapes.values()))[1:]),
                                                 dtype=np.float32)
    batches = -(-args.images // args.batch)
    ready, predicted = [], []
    with tempfile.TemporaryDirectory() as folder:
        make_jpegs(Path(folder), args.images)
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(batches):
                model(x)
            ready.append(args.images / (time.perf_counter() - start))
            start = time.perf_counter()
            rows = list(cnngraph.predict(model, [folder], workers=args.workers))
            predicted.append(len(rows) / (time.perf_counter() - start))
        on_ray = {}
        if args.ray:
            import ray
            ray.init(include_dashboard=False, log_to_driver=False)
            for actors in (1, 2):
                start = time.perf_counter()
                rows = list(cnngraph.predict(spec, [folder], batch_size=args.batch, device=args.device,
                                             weights=model.weights, workers=actors, ray="auto"))
                on_ray[f"ray_{actors}_actors_images_per_s"] = len(rows) / (time.perf_counter() - start)
            ray.shutdown()
    record = run_record(network=args.network, images=args.images, batch=args.batch, device=args.device,
                        workers=args.workers, ready_images_per_s=statistics.median(ready),
                        predict_images_per_s=statistics.median(predicted),
                        ratio=statistics.median(predicted) / statistics.median(ready), **on_ray)
    print(f"{args.network} batch {args.batch} on {args.device}: ready arrays {record['ready_images_per_s']:.1f} img/s, "
          f"predict over JPEGs {record['predict_images_per_s']:.1f} img/s, ratio {record['ratio']:.2f}"
          + "".join(f", {k}: {v:.1f}" for k, v in on_ray.items()))
    save(record, "predict")


if __name__ == "__main__":
    main()
