"""Standard datasets in torchvision's on-disk layout under `data_root`, read into uint8 tensors.

Files are fetched only with `download=True` (torchvision's own downloaders, or its archive helper for
Tiny-ImageNet); a copy that already lies on the machine (Debian's `dataset-fashion-mnist`) is used
without asking. The files are parsed here, by the same code whether they were downloaded, copied or
written by a test. A missing dataset is a one-line TeliError naming the folder and the command that
gets it.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from teli.data.cache import cached_arrays
from teli.errors import TeliError

# Published per-channel statistics on the [0, 1] scale (training split): mean, std, h-flip allowed.
STATS = {
    "mnist": ((0.1307,), (0.3081,), False),
    "fashion-mnist": ((0.2860,), (0.3530,), True),
    "kmnist": ((0.1918,), (0.3483,), False),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), True),
    "tiny-imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), True),
}

# Copies that system packages install: dataset -> (folder, how to get it).
SYSTEM_SOURCES = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"), "apt-get install dataset-fashion-mnist")}

MNIST_FAMILY = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}  # name -> torchvision class
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


def note(message: str) -> None:
    print(f"teli: {message}", file=sys.stderr)


def missing(name: str, folder: Path, root: Path, extra: str = "") -> TeliError:
    return TeliError(f"dataset '{name}' not found in {folder}: pass --download to fetch it into --data-root {root}{extra}")


def fetch(name: str, root: Path) -> None:
    """Download `name` into `root` with torchvision (the one place that touches the network)."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # a dead network fails instead of hanging
    try:
        if name in MNIST_FAMILY:
            getattr(tvd, MNIST_FAMILY[name])(str(root), download=True)
        elif name in ("cifar10", "cifar100"):
            (tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100)(str(root), download=True)
        elif name == "svhn":
            for split in ("train", "test"):
                tvd.SVHN(str(root / "svhn"), split=split, download=True)
        elif name == "stl10":
            tvd.STL10(str(root), split="train", download=True)
        elif name == "tiny-imagenet":
            download_and_extract_archive(TINY_URL, str(root), md5=TINY_MD5)
    except Exception as err:  # noqa: BLE001 - URLError, HTTPError, timeouts, bad checksums: all one message
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TeliError(f"downloading '{name}' into {root} failed ({reason}): check the network, "
                        f"or put the files there yourself") from None
    finally:
        socket.setdefaulttimeout(previous)


def _unreadable(path: Path, err: Exception) -> TeliError:
    return TeliError(f"cannot read {path} ({str(err).splitlines()[0] if str(err) else type(err).__name__}): "
                     f"delete it and fetch it again (--download)")


# ------------------------------------------------------------------------------------------------
# MNIST, Fashion-MNIST, KMNIST: IDX files, gunzipped into ROOT/<Class>/raw/


def _gunzip(src: Path, dst: Path) -> None:
    # a temporary file of this call's own: two runs unpacking into one data root at once must not share one
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    try:
        with gzip.open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ensure_idx(name: str, root: Path, download: bool) -> Path:
    raw = root / MNIST_FAMILY[name] / "raw"
    wanted = [f for pair in IDX_FILES.values() for f in pair]
    if all((raw / f).is_file() for f in wanted):
        return raw
    sources = [raw]
    if name in SYSTEM_SOURCES:
        sources.append(SYSTEM_SOURCES[name][0])
    for folder in sources:
        if all((raw / f).is_file() or (folder / f"{f}.gz").is_file() for f in wanted):
            try:
                raw.mkdir(parents=True, exist_ok=True)
                for f in wanted:
                    if not (raw / f).is_file():
                        _gunzip(folder / f"{f}.gz", raw / f)
            except OSError as err:
                raise TeliError(f"cannot unpack {name} from {folder} into {raw} ({err.strerror or err}): "
                                f"choose a writable --data-root") from None
            except (EOFError, gzip.BadGzipFile) as err:
                raise _unreadable(folder, err) from None
            if folder != raw:
                note(f"using {name} from {folder} (unpacked into {raw})")
            return raw
    if download:
        fetch(name, root)
        return raw
    extra = f", or `{SYSTEM_SOURCES[name][1]}`" if name in SYSTEM_SOURCES else ""
    raise missing(name, raw, root, extra)


def read_idx(raw: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images, labels = (raw / f for f in IDX_FILES[split])
    try:
        x, y = read_image_file(str(images)), read_label_file(str(labels))
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise _unreadable(images, err) from None
    if len(x) != len(y):
        raise TeliError(f"{images} holds {len(x)} images but {labels} {len(y)} labels: delete them and fetch again")
    return x[:, None].contiguous(), y.long()


def load_idx(name: str, root: Path, download: bool) -> dict:
    raw = _ensure_idx(name, root, download)
    (x, y), (xt, yt) = read_idx(raw, "train"), read_idx(raw, "test")
    return {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt, "num_classes": 10}


# ------------------------------------------------------------------------------------------------
# CIFAR-10/100: python pickles


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles; this unpickler builds only numpy arrays and plain containers, so a
    planted file cannot run code (a plain pickle load would call whatever the file names)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as err:  # noqa: BLE001
        raise _unreadable(path, err) from None


def load_cifar(name: str, root: Path, download: bool) -> dict:
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    train = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    test, key = (["test_batch"], "labels") if name == "cifar10" else (["test"], "fine_labels")
    if not all((folder / f).is_file() for f in train + test):
        if not download:
            raise missing(name, folder, root)
        fetch(name, root)

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        entries = [_unpickle(folder / f) for f in files]
        try:
            x = np.concatenate([np.asarray(e["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for e in entries])
            y = np.concatenate([np.asarray(e[key], dtype=np.int64) for e in entries])
        except (KeyError, ValueError) as err:
            raise _unreadable(folder / files[0], err) from None
        return torch.from_numpy(x), torch.from_numpy(y)

    (x, y), (xt, yt) = read(train), read(test)
    return {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt, "num_classes": 10 if name == "cifar10" else 100}


# ------------------------------------------------------------------------------------------------
# SVHN: MATLAB files (X is [32, 32, 3, N], label 10 means digit 0)


def load_svhn(name: str, root: Path, download: bool) -> dict:
    folder = root / "svhn"
    files = {s: folder / f"{s}_32x32.mat" for s in ("train", "test")}
    if not all(f.is_file() for f in files.values()):
        if not download:
            raise missing(name, folder, root)
        fetch(name, root)
    try:
        import scipy.io as sio
    except ImportError:
        raise TeliError("reading SVHN needs scipy: pip install scipy") from None
    out = {}
    for split, path in files.items():
        try:
            mat = sio.loadmat(str(path))
            x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8))
            y = mat["y"].astype(np.int64).reshape(-1)
        except Exception as err:  # noqa: BLE001
            raise _unreadable(path, err) from None
        y[y == 10] = 0
        out[f"x_{split}"], out[f"y_{split}"] = torch.from_numpy(x), torch.from_numpy(y)
    return {**out, "num_classes": 10}


# ------------------------------------------------------------------------------------------------
# STL-10: raw binaries (column-major 3x96x96 images, labels 1..10); unlabeled_X.bin is the pool


def _stl_images(path: Path) -> torch.Tensor:
    try:
        flat = np.memmap(path, dtype=np.uint8, mode="c")
        images = flat.reshape(-1, 3, 96, 96)
    except (OSError, ValueError) as err:
        raise _unreadable(path, err) from None
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 1, 3, 2)))


def _stl_labels(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1)


def load_stl10(name: str, root: Path, download: bool) -> dict:
    folder = root / "stl10_binary"
    needed = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"]
    if not all((folder / f).is_file() for f in needed):
        if not download:
            raise missing(name, folder, root)
        fetch(name, root)
    out = {"num_classes": 10}
    for split in ("train", "test"):
        x, y = _stl_images(folder / f"{split}_X.bin"), _stl_labels(folder / f"{split}_y.bin")
        if len(x) != len(y) or (len(y) and (y.min() < 0 or y.max() > 9)):
            raise _unreadable(folder / f"{split}_y.bin", ValueError("labels do not match the images"))
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    out["x_extra_unlabelled"] = _stl_images(folder / "unlabeled_X.bin")
    return out


# ------------------------------------------------------------------------------------------------
# Tiny-ImageNet: JPEG folders; val/ is restructured into val/<wnid>/images/ once


def restructure_tiny_val(folder: Path) -> None:
    """Move val/images/*.JPEG into val/<wnid>/images/ following val/val_annotations.txt."""
    val = folder / "val"
    annotations = val / "val_annotations.txt"
    if not (val / "images").is_dir() or not annotations.is_file():
        return
    for line in annotations.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        src = val / "images" / parts[0]
        if src.is_file():
            (val / parts[1] / "images").mkdir(parents=True, exist_ok=True)
            src.replace(val / parts[1] / "images" / parts[0])
    if not any((val / "images").iterdir()):
        (val / "images").rmdir()


def _decode_folder(files: list[Path]) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(files), 3, 64, 64), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB").resize((64, 64)) if im.size != (64, 64) else im.convert("RGB"))
        except Exception as err:  # noqa: BLE001
            raise _unreadable(path, err) from None
        out[i] = arr.transpose(2, 0, 1)
    return out


def load_tiny_imagenet(name: str, root: Path, download: bool) -> dict:
    folder = root / "tiny-imagenet-200"
    if not (folder / "wnids.txt").is_file():
        if not download:
            raise missing(name, folder, root)
        fetch(name, root)
    restructure_tiny_val(folder)
    wnids = folder.joinpath("wnids.txt").read_text().split()
    listing = {split: [(p, c) for c, w in enumerate(wnids) for p in sorted((folder / split / w / "images").glob("*.JPEG"))]
               for split in ("train", "val")}
    if not listing["train"]:
        raise TeliError(f"no images under {folder}/train/<wnid>/images/: delete {folder} and pass --download")

    def build() -> dict[str, np.ndarray]:
        note(f"decoding {sum(map(len, listing.values()))} Tiny-ImageNet images once (cached under {root}/.teli-cache)")
        return {f"{s}_{k}": v for s, items in listing.items() for k, v in
                (("x", _decode_folder([p for p, _ in items])), ("y", np.array([c for _, c in items], dtype=np.int64)))}

    arrays = cached_arrays(root, "tiny-imagenet", [p for items in listing.values() for p, _ in items], build)
    return {"x_train": torch.from_numpy(arrays["train_x"]), "y_train": torch.from_numpy(arrays["train_y"]),
            "x_test": torch.from_numpy(arrays["val_x"]), "y_test": torch.from_numpy(arrays["val_y"]), "num_classes": 200}


LOADERS = {**{n: load_idx for n in MNIST_FAMILY}, "cifar10": load_cifar, "cifar100": load_cifar, "svhn": load_svhn,
           "stl10": load_stl10, "tiny-imagenet": load_tiny_imagenet}


def load_standard(name: str, data_root: str, download: bool) -> dict:
    """Arrays and statistics of a standard dataset: x_train, y_train, x_test, y_test, num_classes, mean, std, hflip."""
    arrays = LOADERS[name](name, Path(data_root), download)
    mean, std, hflip = STATS[name]
    return {**arrays, "mean": mean, "std": std, "hflip": hflip}
