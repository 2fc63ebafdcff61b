"""Your own data: class-per-folder images and .npz arrays, and the one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from data_fakes import no_network, solid_png  # noqa: F401 (fixture)

from teli.cli import main
from teli.data import load_dataset, user_data
from teli.errors import TeliError

COLOURS = {"cat": (200, 10, 10), "dog": (10, 200, 10), "eel": (10, 10, 200)}


def image_folder(root, per_class=4, test=True, unlabelled=2, size=(8, 8)):
    for name, colour in COLOURS.items():
        for i in range(per_class):
            solid_png(root / "train" / name / f"{i}.png", tuple(c + i for c in colour), size)
            if test and i < 2:
                solid_png(root / "test" / name / f"{i}.jpg", colour, size)
    for i in range(unlabelled):
        solid_png(root / "unlabelled" / f"u{i}.png", (i, i, i), size)
    return root


def load_folder(path, tmp_path, **kw):
    return load_dataset("digits", str(tmp_path / "root"), source=f"folder:{path}", **kw)


def test_folder_with_train_test_and_unlabelled(tmp_path):
    ds = load_folder(image_folder(tmp_path / "pets"), tmp_path)
    assert ds.name == "pets" and ds.num_classes == 3 and ds.x_train.shape == (12, 3, 8, 8)
    assert ds.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # classes: folder names, sorted
    assert ds.x_train[5, :, 0, 0].tolist() == [11, 201, 11]  # dog #1, PNG is lossless
    assert ds.x_test.shape == (6, 3, 8, 8) and ds.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.x_extra_unlabelled.shape == (2, 3, 8, 8) and ds.x_extra_unlabelled[1].eq(1).all()
    assert not ds.hflip and abs(ds.mean[0] - ds.x_train[:, 0].float().mean().item() / 255) < 1e-4  # stats from the data


def test_folder_without_test_holds_out_a_stratified_split(tmp_path):
    ds = load_folder(image_folder(tmp_path / "pets", per_class=10, test=False, unlabelled=0), tmp_path, test_fraction=0.3)
    assert len(ds.x_train) + len(ds.x_test) == 30 and sorted(ds.y_test.tolist()) == [0] * 3 + [1] * 3 + [2] * 3
    assert ds.x_extra_unlabelled is None


def test_grey_and_colour_images_become_rgb(tmp_path):
    root = image_folder(tmp_path / "pets", test=False, per_class=6, unlabelled=0)
    solid_png(root / "train" / "cat" / "grey.png", 77, mode="L")
    ds = load_folder(root, tmp_path)
    assert ds.input_shape == (3, 8, 8)
    assert (ds.x_train == 77).all(dim=(1, 2, 3)).sum() + (ds.x_test == 77).all(dim=(1, 2, 3)).sum() == 1


def test_corrupt_image_stops_or_is_skipped(tmp_path, capsys):
    root = image_folder(tmp_path / "pets")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(TeliError, match=r"cannot read image .*broken\.png.*on_corrupt=skip") as err:
        load_folder(root, tmp_path)
    assert "\n" not in str(err.value)
    ds = load_folder(root, tmp_path, on_corrupt="skip")
    assert len(ds.x_train) == 12 and "skipped 1 unreadable image" in capsys.readouterr().err
    out = tmp_path / "runs"
    assert main(["run", "--data", f"folder:{root}", "--data-root", str(tmp_path / "root2"), "--out", str(out), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "broken.png" in lines[0] and not out.exists()


def test_empty_class_folder(tmp_path):
    root = image_folder(tmp_path / "pets")
    (root / "train" / "fox").mkdir()
    with pytest.raises(TeliError, match=r"class folder .*train/fox has no images"):
        load_folder(root, tmp_path)


def test_mixed_sizes_error_or_resize(tmp_path):
    root = image_folder(tmp_path / "pets")
    solid_png(root / "train" / "eel" / "big.png", (1, 2, 3), size=(12, 10))
    with pytest.raises(TeliError, match=r"image .*big\.png is 12x10 but .* is 8x8: pass --resize"):
        load_folder(root, tmp_path)
    ds = load_folder(root, tmp_path, resize=16)
    assert ds.x_train.shape == (13, 3, 16, 16) and ds.x_test.shape[2:] == (16, 16) and ds.x_extra_unlabelled.shape[2:] == (16, 16)


def test_folder_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "pets")
    first = load_folder(root, tmp_path)
    real = user_data._decode
    monkeypatch.setattr(user_data, "_decode", lambda *a: (_ for _ in ()).throw(AssertionError("decoded despite cache")))
    assert torch.equal(load_folder(root, tmp_path).x_train, first.x_train)
    solid_png(root / "train" / "cat" / "0.png", (0, 0, 0))  # a changed source: decoded again
    monkeypatch.setattr(user_data, "_decode", real)
    assert load_folder(root, tmp_path).x_train[0].eq(0).all()


def npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_nhwc_uint8_and_nchw_float_agree(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
    y = np.arange(20) % 4
    a = load_dataset("digits", source=npz(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8], x_unlabelled=x[:5]))
    b = load_dataset("digits", source=npz(tmp_path / "b.npz", x_train=x.transpose(0, 3, 1, 2) / 255.0, y_train=y.reshape(-1, 1),
                                          x_test=x[:8] / 255.0, y_test=y[:8], x_unlabelled=x[:5].astype(np.float32) / 255))
    assert a.x_train.shape == (20, 3, 6, 6) and a.num_classes == 4 and a.name == "a"
    for key in ("x_train", "y_train", "x_test", "x_extra_unlabelled"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert torch.equal(a.x_train, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))


def test_npz_grey_without_test_split(tmp_path):
    x = np.zeros((30, 5, 5), dtype=np.uint8)
    ds = load_dataset("digits", source=npz(tmp_path / "g.npz", x_train=x, y_train=np.arange(30) % 3))
    assert ds.input_shape == (1, 5, 5) and len(ds.x_test) == 9


GOOD_X = np.zeros((6, 4, 4, 1), dtype=np.uint8)
GOOD_Y = np.array([0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("arrays,message", [
    ({"x_train": GOOD_X, "y_train": GOOD_Y[:5]}, r"y_train has 5 labels but its images 6"),
    ({"x_train": GOOD_X, "y_train": GOOD_Y, "x_test": GOOD_X, "y_test": GOOD_Y + 1}, r"y_test .* label 2, out of range"),
    ({"x_train": GOOD_X, "y_train": GOOD_Y - 1}, r"holds label -1"),
    ({"x_train": GOOD_X, "y_train": GOOD_Y * 2}, r"no images of class 1"),
    ({"x_train": np.zeros((6, 4, 4, 2), np.uint8), "y_train": GOOD_Y}, r"shape \(6, 4, 4, 2\): expected \[N, H, W, C\]"),
    ({"x_train": np.zeros((6, 16), np.uint8), "y_train": GOOD_Y}, r"shape \(6, 16\)"),
    ({"x_train": GOOD_X + 1.5, "y_train": GOOD_Y}, r"float with values in \[1.5, 1.5\].*\[0, 1\]"),
    ({"x_train": GOOD_X - 1.5, "y_train": GOOD_Y}, r"must lie in \[0, 1\]"),
    ({"x_train": GOOD_X, "y_train": GOOD_Y, "x_test": np.zeros((2, 5, 5, 1), np.uint8), "y_test": GOOD_Y[:2]}, r"x_test images .* must match"),
    ({"x_train": GOOD_X, "y_train": GOOD_Y, "x_test": GOOD_X}, r"only one of x_test / y_test"),
    ({"images": GOOD_X, "y_train": GOOD_Y}, r"no 'x_train' array \(it has: images, y_train\)"),
    ({"x_train": np.zeros((6, 4, 5), np.uint8), "y_train": GOOD_Y}, r"5x4, not square: pass --resize"),
])
def test_npz_errors_are_one_line(tmp_path, arrays, message):
    with pytest.raises(TeliError, match=message) as err:
        load_dataset("digits", source=npz(tmp_path / "d.npz", **arrays), test_fraction=0.5)
    assert "\n" not in str(err.value)


def test_npz_wrong_shape_and_bad_source_exit_2(tmp_path, capsys):
    source = npz(tmp_path / "w.npz", x_train=np.zeros((6, 4, 4, 2), np.uint8), y_train=GOOD_Y)
    assert main(["run", "--data", source, "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    assert main(["run", "--data", "zip:/nowhere", "--quiet"]) == 2
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert main(["run", "--data", f"npz:{tmp_path / 'junk.npz'}", "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "w.npz" in lines[0] and "folder:PATH or npz:PATH" in lines[1] and "cannot read" in lines[2]


def test_cli_run_on_npz_with_strong_augmentation(tmp_path, capsys):
    rng = np.random.default_rng(1)
    y = np.arange(60) % 3
    x = (rng.integers(0, 60, (60, 8, 8, 1)) + 60 * y[:, None, None, None]).astype(np.uint8)  # classes differ in brightness
    source = npz(tmp_path / "toy.npz", x_train=x, y_train=y)
    argv = ["run", "--data", source, "-k", "4", "--steps", "3", "--set", "teachers.optim.steps=3", "--set", "data.strong_augment=true",
            "--out", str(tmp_path / "runs"), "--name", "toy", "--quiet", "--json", "--threads", "1"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dataset"] == "toy" and len(summary["models"]) == 4 and summary["pseudo_labels"]["pool_size"] == 42 - 12
