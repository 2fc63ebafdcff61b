"""Small files in the formats the real sources use, written by the tests themselves; and a network guard."""

from __future__ import annotations

import gzip
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download or open a socket fails the test loudly."""
    import torchvision.datasets.utils as tvu

    from teli.data import torchvision_sources

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(tvu, "download_url", refuse)
    monkeypatch.setattr(tvu, "download_and_extract_archive", refuse)
    monkeypatch.setattr(torchvision_sources, "SYSTEM_SOURCES", {})  # the machine's own copies stay out of tests


def rng_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_idx_gz(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """IDX files as published (big-endian header), gzip-compressed: PREFIX-images-idx3-ubyte.gz etc."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">iiii", 0x803, n, h, w) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">ii", 0x801, n) + labels.astype(np.uint8).tobytes())


def write_mnist_like(folder: Path, n_train: int = 40, n_test: int = 20) -> dict:
    data = {"x_train": rng_images(n_train, (28, 28), 1), "y_train": np.arange(n_train) % 10,
            "x_test": rng_images(n_test, (28, 28), 2), "y_test": np.arange(n_test) % 10}
    write_idx_gz(folder, "train", data["x_train"], data["y_train"])
    write_idx_gz(folder, "t10k", data["x_test"], data["y_test"])
    return data


def write_cifar(root: Path, hundred: bool, per_batch: int = 10) -> dict:
    """CIFAR python pickles: dicts with 'data' [N, 3072] uint8 and 'labels' / 'fine_labels'."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key, classes = ("fine_labels", 100) if hundred else ("labels", 10)
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    xs, ys = [], []
    for i, name in enumerate(names + ["test" if hundred else "test_batch"]):
        x = rng_images(per_batch, (3 * 32 * 32,), seed=i)
        y = (np.arange(per_batch) * 7 + i) % classes
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x, key: y.tolist(), "batch_label": name}, f)
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return {"x_train": np.concatenate(xs[:-1]), "y_train": np.concatenate(ys[:-1]), "x_test": xs[-1], "y_test": ys[-1]}


def write_svhn(root: Path, n: int = 12) -> dict:
    import scipy.io as sio

    folder = root / "svhn"
    folder.mkdir(parents=True)
    out = {}
    for i, split in enumerate(("train", "test")):
        x = rng_images(n, (3, 32, 32), seed=i)  # [N, C, H, W]
        y = np.arange(n) % 10 + 1  # SVHN's labels run 1..10, 10 meaning the digit 0
        sio.savemat(folder / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y.reshape(-1, 1).astype(np.uint8)})
        out[f"x_{split}"], out[f"y_{split}"] = x, y % 10
    return out


def write_stl10(root: Path, n: int = 10, n_unlabelled: int = 6) -> dict:
    """STL-10 binaries: each image 3x96x96 in column-major order; labels 1..10, one byte each."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for i, split in enumerate(("train", "test", "unlabeled")):
        x = rng_images(n_unlabelled if split == "unlabeled" else n, (3, 96, 96), seed=i)
        x.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        out[f"x_{split}"] = x
        if split != "unlabeled":
            y = np.arange(n) % 10
            (y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
            out[f"y_{split}"] = y
    return out


def solid_png(path: Path, color, size=(8, 8), mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def write_tiny_imagenet(root: Path, wnids=("n01", "n02", "n03"), per_class: int = 3, val_per_class: int = 2) -> None:
    """The archive's layout: train/<wnid>/images/*.JPEG; val/images/*.JPEG with val/val_annotations.txt."""
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, wnid in enumerate(wnids):
        color = (80 * c, 255 - 80 * c, 40)
        for i in range(per_class):
            path = folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), color).save(path)
        for i in range(val_per_class):
            name = f"val_{c}_{i}.JPEG"
            Image.new("RGB", (64, 64), color).save(folder / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
