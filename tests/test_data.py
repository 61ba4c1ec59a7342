"""Datasets, preprocessing and targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import harness
from harness.images import crop_pixels, read_image, to_rgb


def test_samples_ship_offline_and_are_rgb():
    data = harness.load_dataset("samples")
    assert data.ids == ["chelsea", "coffee", "rocket", "astronaut", "motorcycle_left",
                        "grace_hopper"]
    for sample in data:
        image = sample.load()
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert sample.label is None
    labelled = harness.load_dataset("samples", names=["coffee"], labels={"coffee": 967})
    assert labelled[0].label == 967
    with pytest.raises(harness.UnknownNameError, match="unknown sample image 'cofee'.*coffee"):
        harness.load_dataset("samples", names=["cofee"])


def test_grayscale_and_rgba_are_converted(tmp_path):
    gray = harness.load_dataset("samples", names=["camera"])[0].load()
    assert gray.shape == (512, 512, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., 0], "L").save(tmp_path / "b.png")
    assert read_image(tmp_path / "a.png").shape == (20, 30, 3)
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]
    assert read_image(tmp_path / "b.png")[0, 0].tolist() == [200, 200, 200]
    assert to_rgb(rgba).shape == (20, 30, 3)


def test_cs231n_npz(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    y = np.array([958, 85, 244, 182, 294])
    label_map = {i: f"name {i}" for i in range(1000)}
    np.savez(tmp_path / "imagenet_val_25.npz", X=X, y=y, label_map=label_map)
    data = harness.load_dataset("cs231n_npz", path=tmp_path / "imagenet_val_25.npz")
    assert len(data) == 5 and [s.label for s in data] == y.tolist()
    assert data.ids[0] == "imagenet_val_25/0" and data.class_names[958] == "name 958"
    assert np.array_equal(data[2].load(), X[2])
    with pytest.raises(ValueError, match="does not exist"):
        harness.load_dataset("cs231n_npz", path=tmp_path / "missing.npz")


def test_seed_preprocessing_is_exact_on_224_images():
    """224x224 images (the cs231n npz) go through the seed's Resize(224) unchanged."""
    model = harness.load_model("squeezenet1_1", weights="random")
    info = model.harness_info
    image = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    x = harness.preprocess([image], info)
    mean = torch.tensor(info.mean).view(3, 1, 1)
    std = torch.tensor(info.std).view(3, 1, 1)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(x[0], expected)
    pixels = harness.deprocess(x, info)
    torch.testing.assert_close(pixels[0], torch.from_numpy(image).permute(2, 0, 1).float() / 255,
                               rtol=0, atol=1e-6)


def test_resize_and_centre_crop_non_square():
    model = harness.load_model("squeezenet1_1", weights="random")
    image = np.zeros((300, 451, 3), np.uint8)
    image[:, 225] = 255  # the centre column survives the centre crop
    crop = crop_pixels([image], model.harness_info)[0]
    assert crop.shape == (224, 224, 3)
    assert crop[:, 112].mean() > 100 and crop[:, 0].max() == 0
    assert harness.preprocess([image], model.harness_info).is_contiguous()


def _write_images(folder, names, size=(40, 50)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((*size, 3), i * 40, np.uint8)).save(folder / name)


def test_imagefolder_class_subfolders_and_flat_with_labels(tmp_path):
    _write_images(tmp_path / "val" / "n02123045", ["b.JPEG", "a.JPEG"])
    _write_images(tmp_path / "val" / "n01440764", ["c.png"])
    data = harness.load_dataset("imagefolder", root=tmp_path / "val")
    assert data.ids == ["n01440764/c.png", "n02123045/a.JPEG", "n02123045/b.JPEG"]
    assert [s.label for s in data] == [0, 1, 1]
    _write_images(tmp_path / "flat", ["x.jpg", "y.jpg", "z.jpg"])
    (tmp_path / "labels.csv").write_text("filename,label\nx.jpg,3\nz.jpg, 7\n")
    flat = harness.load_dataset("imagefolder", root=tmp_path / "flat",
                                labels_file=tmp_path / "labels.csv")
    assert [(s.id, s.label) for s in flat] == [("x.jpg", 3), ("y.jpg", None), ("z.jpg", 7)]


def test_corrupt_image_names_the_file(tmp_path):
    _write_images(tmp_path / "flat", ["good.jpg"])
    (tmp_path / "flat" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    data = harness.load_dataset("imagefolder", root=tmp_path / "flat")
    bad = next(s for s in data if s.id == "bad.jpg")
    with pytest.raises(ValueError, match=r"cannot read image file .*bad\.jpg"):
        bad.load()


def test_limit_and_seed_are_deterministic():
    full = harness.load_dataset("samples")
    assert harness.load_dataset("samples", limit=2).ids == full.ids[:2]
    a = harness.load_dataset("samples", limit=3, seed=7).ids
    assert a == harness.load_dataset("samples", limit=3, seed=7).ids
    assert a == [i for i in full.ids if i in a]  # kept in dataset order
    assert len(set(a)) == 3


def test_label_out_of_range_names_image(tiny_cnn):
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="label 12 of image 'img-b' is out of range.*5 classes"):
        harness.resolve_targets(tiny_cnn, x, [1, 12], ["img-a", "img-b"])
    targets = harness.resolve_targets(tiny_cnn, x, [None, 3], ["a", "b"])
    with torch.no_grad():
        assert targets.tolist() == [int(tiny_cnn(x[:1]).argmax()), 3]
    predicted = harness.resolve_targets(tiny_cnn, x, [1, 3], ["a", "b"], mode="predicted")
    with torch.no_grad():
        assert predicted.tolist() == tiny_cnn(x).argmax(1).tolist()


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(harness.UnknownNameError,
                       match="Valid datasets: cs231n_npz, imagefolder, pasted_objects, samples"):
        harness.load_dataset("imagenet")


def test_fingerprint_changes_with_data():
    a = harness.load_dataset("samples", names=["coffee"])
    b = harness.load_dataset("samples", names=["coffee"], labels={"coffee": 1})
    assert a.fingerprint() == harness.load_dataset("samples", names=["coffee"]).fingerprint()
    assert a.fingerprint() != b.fingerprint()
