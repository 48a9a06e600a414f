"""Images in, answers out: the spec's `preprocess` against an independent reference of
torchvision's Resize + CenterCrop + ToTensor + Normalize, image decoding (EXIF, modes, bombs), and
`cnngraph predict` (folders, globs, arrays, bad files, --resume, tables)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import cnngraph  # noqa: E402
from cnngraph import preprocess as pre  # noqa: E402
from cnngraph.errors import InputError, SpecError  # noqa: E402
from cnngraph.predict import predict  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def reference(image: Image.Image, resize, crop, interpolation="bilinear", mean=MEAN, std=STD, bgr=False):
    """torchvision's classic transform written out: the shorter side to `resize` (the other side
    int(resize * long / short)) by Pillow's resampling, the centre crop at int(round((size - crop) / 2)),
    values / 255, then (x - mean) / std per channel."""
    w, h = image.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    image = image.resize(size, {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
        interpolation])
    a = np.asarray(image).astype(np.float64)
    a = a[:, :, None] if a.ndim == 2 else a
    top, left = int(round((a.shape[0] - crop) / 2.0)), int(round((a.shape[1] - crop) / 2.0))
    a = a[top:top + crop, left:left + crop] / 255.0
    if bgr:
        a = a[:, :, ::-1]
    return ((a - np.array(mean)) / np.array(std)).transpose(2, 0, 1)


def random_image(h, w, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": None, "RGBA": 4}[mode]
    shape = (h, w) if channels is None else (h, w, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.mark.parametrize("h, w", [(300, 400), (400, 300), (257, 256), (224, 224), (500, 231)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_preprocess_matches_torchvisions_transform(h, w, interpolation):
    image = random_image(h, w, seed=h * w)
    steps = pre.Preprocess(resize=256, center_crop=224, interpolation=interpolation, mean=MEAN, std=STD)
    got = steps(image)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(image, 256, 224, interpolation), rtol=0, atol=1e-5)


def test_preprocess_bgr_grey_and_exact_size():
    image = random_image(120, 90)
    bgr = pre.Preprocess(resize=64, center_crop=64, color="BGR", mean=MEAN, std=STD)(image)
    np.testing.assert_allclose(bgr, reference(image, 64, 64, bgr=True), atol=1e-5)  # mean, std: B, G, R order
    grey = random_image(50, 70, "L")
    got = pre.Preprocess(resize=[32, 48], color="L", mean=[0.5], std=[0.5])(grey)
    want = (np.asarray(grey.resize((48, 32), Image.BILINEAR), np.float64) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(got, want[None], atol=1e-5)


def test_center_crop_larger_than_the_image_pads_with_zeros():
    image = random_image(10, 12)
    got = pre.Preprocess(center_crop=16, scale=1.0)(image)
    assert got.shape == (3, 16, 16)
    np.testing.assert_array_equal(got[:, 3:13, 2:14], np.asarray(image, np.float32).transpose(2, 0, 1))
    assert not got[:, :3].any() and not got[:, :, :2].any()


def test_decoding_applies_exif_and_converts_modes(tmp_path):
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    random_image(20, 40).save(rotated, exif=exif)
    assert pre.decode_image(rotated).size == (20, 40)  # (width, height) after the rotation
    for mode, make in {"P": lambda: random_image(9, 9).convert("P"), "RGBA": lambda: random_image(9, 9, "RGBA"),
                       "CMYK": lambda: random_image(9, 9).convert("CMYK"),
                       "I;16": lambda: Image.fromarray(np.arange(81, dtype=np.uint16).reshape(9, 9) * 300),
                       "L": lambda: random_image(9, 9, "L")}.items():
        path = tmp_path / f"{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png' if mode != 'I;16' else 'tif'}"
        make().save(path)
        image = pre.decode_image(path)
        assert image.mode == "RGB" and np.asarray(image).shape == (9, 9, 3), mode


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_unreadable_files_are_one_input_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match="bad.png: not a readable image"):
        pre.decode_image(path)


def test_truncated_and_oversized_images_are_refused(tmp_path, monkeypatch):
    whole = tmp_path / "whole.png"
    random_image(64, 64).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(InputError, match="not a readable image"):
        pre.decode_image(cut)
    monkeypatch.setattr(pre, "MAX_PIXELS", 1000)
    with pytest.raises(InputError, match="64x64 pixels is over the limit of 1,000"):
        pre.decode_image(whole)


TINY = {"format_version": 1, "name": "tiny", "inputs": [{"name": "x", "shape": [3, 32, 32]}],
        "preprocess": {"resize": 36, "center_crop": 32, "mean": MEAN, "std": STD},
        "labels": ["cat", "dog", "bird", "fish"],
        "layers": [{"op": "conv2d", "out_channels": 8, "kernel_size": 3, "activation": "relu"},
                   {"op": "global_avg_pool2d"}, {"op": "flatten"}, {"op": "linear", "out_features": 4}]}


@pytest.mark.parametrize("field, value, message", [
    ("center_crop", 30, "makes 30x30 images, the input is 32x32"),
    ("color", "L", '"L" gives 1 channel'),
    ("mean", [0.1, 0.2], "has 2 values"),
    ("std", [1.0, 0.0, 1.0], "greater than 0"),
    ("resize", [1, 2, 3], "one number or \\[height, width\\]"),
    ("interpolation", "lanczos", "interpolation"),
])
def test_bad_preprocess_blocks_are_one_spec_error(field, value, message):
    spec = json.loads(json.dumps(TINY))
    spec["preprocess"][field] = value
    with pytest.raises(SpecError, match=message):
        cnngraph.model.as_spec(spec)
    spec = json.loads(json.dumps(TINY))
    del spec["preprocess"]["center_crop"]  # a shorter side alone: the size depends on each image
    with pytest.raises(SpecError, match="depend on their aspect ratio"):
        cnngraph.model.as_spec(spec)


def images(folder: Path, count: int, bad: bool = True) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"im{i}.png")
        random_image(40 + 3 * i, 50, seed=i).save(paths[-1])
    if bad:
        (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
        (folder / "empty.png").write_bytes(b"")
    return paths


def test_predict_rows_match_the_model_on_preprocessed_images(tmp_path):
    paths = images(tmp_path / "imgs", 5)
    rows = list(predict(TINY, [tmp_path / "imgs"], batch_size=2, device="cpu", top=3))
    assert [Path(r["input"]).name for r in rows] == ["corrupt.jpg", "empty.png", *[p.name for p in paths]]
    assert all(r["error"] for r in rows[:2]) and not any(r["error"] for r in rows[2:])
    model = cnngraph.compile(TINY, batch_size=5, device="cpu")
    steps = model.spec.preprocess
    logits = model(np.stack([steps(pre.decode_image(p)) for p in paths]))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for row, p in zip(rows[2:], probs):
        best = list(np.argsort(-p)[:3])
        assert row["classes"] == best and row["labels"] == [TINY["labels"][i] for i in best]
        np.testing.assert_allclose(row["probabilities"], p[best], rtol=1e-5)


def test_predict_arrays_and_outputs_of_a_non_classifier(tmp_path):
    spec = {"format_version": 1, "name": "seg", "inputs": [{"name": "x", "shape": [2, 4, 4]}],
            "layers": [{"op": "conv2d", "out_channels": 3, "kernel_size": 1}]}
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "many.npy", x)
    np.save(tmp_path / "one.npy", x[0])
    np.save(tmp_path / "wrong.npy", x[:, :1])
    rows = list(predict(spec, [tmp_path / "*.npy"], batch_size=2, device="cpu"))
    assert [r["input"].rsplit("/", 1)[1] for r in rows] == ["many.npy[0]", "many.npy[1]", "many.npy[2]", "one.npy",
                                                            "wrong.npy"]
    want = cnngraph.compile(spec, batch_size=3, device="cpu")(x)
    for row, w in zip(rows[:3], want):
        np.testing.assert_allclose(row["output"], w, rtol=1e-6)
    assert "needs (2, 4, 4)" in rows[4]["error"]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "cnngraph.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_cli_predict_writes_a_table_exits_3_on_bad_files_and_resumes(tmp_path):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps({**TINY, "labels": "names.txt"}))
    (tmp_path / "names.txt").write_text("cat\ndog\nbird\nfish\n")
    images(tmp_path / "imgs", 3)
    out = tmp_path / "out.csv"
    first = run_cli("predict", spec, tmp_path / "imgs", "--device", "cpu", "--batch", "2", "--top", "2", "-o", out,
                    cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    assert first.stderr.count("error: ") == 2 and "corrupt.jpg" in first.stderr and "Traceback" not in first.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and {r["label_1"] for r in rows if not r["error"]} <= {"cat", "dog", "bird", "fish"}
    assert not (tmp_path / "out.csv.partial").exists()
    images(tmp_path / "imgs" / "more", 2, bad=False)  # two more images; the first five are skipped
    again = run_cli("predict", spec, tmp_path / "imgs", "--device", "cpu", "--top", "2", "-o", out, "--resume",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    resumed = list(csv.DictReader(out.open()))
    assert resumed[:5] == rows and len(resumed) == 7 and "more/im1.png" in resumed[-1]["input"]


def test_cli_predict_jsonl_and_one_line_errors(tmp_path):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    images(tmp_path / "imgs", 2, bad=False)
    done = run_cli("predict", spec, tmp_path / "imgs" / "*.png", "--device", "cpu", "-o", "p.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["label_1"] in TINY["labels"] and rows[0]["error"] is None
    missing = run_cli("predict", spec, tmp_path / "nothing_here", "--device", "cpu", cwd=tmp_path)
    assert missing.returncode == 2 and "nothing_here: no such file" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad_out = run_cli("predict", spec, tmp_path / "imgs", "--device", "cpu", "-o", "p.txt", cwd=tmp_path)
    assert bad_out.returncode == 2 and "must end in .csv" in bad_out.stderr


def test_examples_carry_imagenet_preprocessing_and_labels():
    names = (EXAMPLES / "imagenet_classes.txt").read_text().splitlines()
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"
    for name in ("resnet18", "mobilenet_v2", "squeezenet1_1", "mobilenet_v3_large", "efficientnet_b0",
                 "shufflenet_v2", "densenet121", "convnext_tiny", "resnet50"):
        spec = cnngraph.load_spec(EXAMPLES / f"{name}.json")
        assert spec.preprocess.center_crop == 224 and spec.preprocess.mean == MEAN, name
        assert spec.label_names() == names, name


def test_cli_predict_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    images(tmp_path / "imgs", 2)
    done = run_cli("predict", spec, tmp_path / "imgs", "--device", "cpu", "-o", "p.parquet", "--top", "1",
                   cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    rows = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert len(rows) == 4 and sum(r["error"] is not None for r in rows) == 2
    assert {r["label_1"] for r in rows if r["error"] is None} <= set(TINY["labels"])
